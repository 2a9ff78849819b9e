"""l2s: lip-to-speech at corpus scale on Ray."""

__version__ = "0.1.0"
