"""Audio-visual sync, from a sync expert l2s trained (`l2s train-sync`). Imports models, never
training.

    expert.py  `SyncExpert`: a checkpoint's two towers; (mouth ROIs, log-mel) → `SyncScore`
               (best offset, LSE-C-style confidence, LSE-D-style distance), and shifting audio
    clip.py    a video (and optionally another audio file) → its `SyncScore` (`l2s sync`)
"""


class SyncError(ValueError):
    """A clip cannot be scored for sync; the message names the file and the problem."""
