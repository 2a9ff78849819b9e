"""The one picture several places draw: a ground-truth mel above a predicted one, on one colour
scale (the report's per-utterance plots, TensorBoard's validation images)."""

from __future__ import annotations

import numpy as np


def mel_pair(
    target_MF: np.ndarray,
    predicted_MF: np.ndarray,
    labels: tuple[str, str] = ("ground truth", "l2s"),
    size: tuple[float, float] = (7.0, 3.2),
):
    """A matplotlib figure (Agg backend) of the two mels; the caller saves or logs and closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 1, figsize=size, sharex=True)
    low, high = float(target_MF.min()), float(target_MF.max())
    for ax, mel_MF, label in zip(axes, (target_MF, predicted_MF), labels, strict=True):
        ax.imshow(mel_MF, origin="lower", aspect="auto", vmin=low, vmax=high, interpolation="none")
        ax.set_ylabel(label, fontsize=8)
        ax.set_yticks([])
    axes[-1].set_xlabel("mel frame (10 ms)", fontsize=8)
    figure.tight_layout()
    return figure
