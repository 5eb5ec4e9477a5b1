"""voicegw.privacy"""
