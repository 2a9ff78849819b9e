"""Scoring generated speech: per-utterance metrics (`metrics`) and offline ASR backends (`asr`).

Submodules are imported explicitly so that scoring signals never loads the ASR decoder.
"""
