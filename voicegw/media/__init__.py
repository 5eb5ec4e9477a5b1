"""voicegw.media"""
