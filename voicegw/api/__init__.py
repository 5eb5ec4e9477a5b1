"""voicegw.api"""
