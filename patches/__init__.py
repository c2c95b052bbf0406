"""specplug.patches"""
