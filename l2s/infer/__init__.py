"""Inference: a trained checkpoint and a talking face → speech. Imports models, never training.

    checkpoint.py  reading checkpoints (weights + exact configs), local or s3://; no Ray, no DeepSpeed
    speakers.py    the speaker table a checkpoint carries (each training speaker's mean embedding)
    model.py       `SpeechModel`: a checkpoint's network; mouth ROIs → log-mel and lip-read text
    windows.py     the model windows over a clip and their cross-fade
    sampling.py    a flow-matching head's sampling: guidance on video and text, a recognizer's pull
    recognizer.py  a speech recognizer `l2s train-asr` trained, as an offline ASR backend
    voice.py       which speaker embedding a clip is spoken in (never its own audio's)
    vocoder.py     log-mel → waveform (Griffin-Lim or a trained HiFi-GAN)
    speak.py       one video of any length → mouth ROIs → speech.wav

Batch generation (`l2s.pipeline.generate`), `l2s speak`, the endpoint (`l2s.serve`) and dubbing
(`l2s.dub`) call these; `l2s.train` imports this package to read the checkpoints it writes.
"""


class SpeakError(ValueError):
    """The video cannot be spoken; the message names the file and the problem."""
