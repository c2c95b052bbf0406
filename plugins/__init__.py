"""specplug.plugins"""
