"""The synthetic talking-face corpus: espeak-ng speech, lips rendered from its phoneme timings."""
