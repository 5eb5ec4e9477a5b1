"""voicegw: contact-center telephony and voice-AI gateway."""

__version__ = "0.1.0"
