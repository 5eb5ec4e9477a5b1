"""voicegw.asr"""
