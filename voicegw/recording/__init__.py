"""voicegw.recording"""
