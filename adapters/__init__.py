"""specplug.adapters"""
