"""Code shared by one vendor's speech adapters (ASR and TTS alike)."""
