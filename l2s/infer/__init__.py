"""Inference: a trained checkpoint and a talking face → speech. Imports models, never training.

    checkpoint.py  reading checkpoints (weights + exact configs), local or s3://; no Ray, no DeepSpeed
    speakers.py    the speaker table a checkpoint carries (each training speaker's mean embedding)

`l2s.train` imports this package to read the checkpoints it writes.
"""
