"""voicegw's two C extensions; everything else about the package is in pyproject.toml.

setuptools' ``[tool.setuptools.ext-modules]`` table is still experimental (it warns on
every build), so the extensions are declared here, the long-standing way.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-unused-parameter"]
#: The RTP header reader both use (RtpPacket.parse's checks): a change rebuilds both.
RTP_VIEW = ["voicegw/media/_rtp_view.h"]

setup(
    ext_modules=[
        # Batched media socket reads and the same-codec relay step (voicegw/media/pump.py).
        Extension(
            "voicegw.media._pump",
            ["voicegw/media/_pump.c"],
            depends=RTP_VIEW,
            extra_compile_args=FLAGS,
        ),
        # The adaptive jitter buffer, per packet and tick of tapped legs (media/jitter.py).
        Extension(
            "voicegw.media._jitter",
            ["voicegw/media/_jitter.c"],
            depends=RTP_VIEW,
            extra_compile_args=FLAGS,
        ),
    ]
)
