"""voicegw.tts"""
