"""The HTTP endpoint on Ray Serve: video in, speech or the dubbed video out (see app.py).

Importing this package loads neither Ray nor torch; `l2s.serve.app` does.
"""

from l2s.serve.config import Rejected, ServeConfig

__all__ = ["Rejected", "ServeConfig"]
