"""voicegw.calls"""
