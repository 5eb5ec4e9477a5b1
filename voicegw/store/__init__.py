"""voicegw.store"""
