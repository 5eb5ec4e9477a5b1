"""voicegw.sip"""
