"""The jobs behind the commands, one module per command family. ``cli.py`` only parses, calls and prints."""
