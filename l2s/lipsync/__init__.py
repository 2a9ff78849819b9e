"""Lips re-drawn to match new speech (`l2s train-lipsync`, `l2s lipsync`). Imports models, never
training.

    model.py  `LipSyncModel`: a checkpoint's generator; mouth ROIs + reference + log-mel → ROIs
    paste.py  a re-drawn ROI back into its source frame (inverse alignment, feathered, luma only)
    video.py  one video + a speech file → the video with its mouth re-drawn and that speech muxed
"""


class LipSyncError(ValueError):
    """A video cannot be re-rendered; the message names the file and the problem."""
