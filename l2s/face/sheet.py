"""Contact sheets of mouth ROIs: one labelled row per clip, evenly spaced frames, one PNG.

Also used for other grids of 96×96 tiles (e.g. the synthetic corpus's viseme sheet, one tile per
speaker), hence the optional column captions.

For eyeballing a preprocessing run (is the mouth centred, at a steady scale, in every clip?)
without opening videos. Letters in shape names: T frames, H×W pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 4  # pixels between tiles and rows
LABEL_WIDTH = 160
CAPTION = 14  # strip under each tile for its frame index


def contact_sheet(
    rois: Sequence[np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    n_frames: int = 8,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write a PNG grid: row i shows `n_frames` evenly spaced frames of rois[i] (roi_THW uint8),
    labelled with labels[i]. Tiles are captioned with their frame index, unless `captions` names
    the columns (one per column, drawn once above the grid). Returns the path written."""
    if len(rois) != len(labels):
        raise ValueError(f"{len(rois)} clips but {len(labels)} labels")
    if not rois:
        raise ValueError("no clips to draw")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if captions is not None and len(captions) != n_frames:
        raise ValueError(f"{len(captions)} column captions for {n_frames} columns")
    for label, roi_THW in zip(labels, rois, strict=True):
        if roi_THW.ndim != 3 or roi_THW.dtype != np.uint8 or not len(roi_THW):
            raise ValueError(f"{label}: expected a non-empty uint8 roi_THW, got {roi_THW.shape}")
    tile_h = max(r.shape[1] for r in rois)
    tile_w = max(r.shape[2] for r in rois)
    header = 0 if captions is None else CAPTION + GAP
    below = CAPTION if captions is None else 0
    row_h = tile_h + below + GAP
    width = LABEL_WIDTH + n_frames * (tile_w + GAP) + GAP
    height = header + len(rois) * row_h + GAP
    sheet = Image.new("L", (width, height), color=255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for col, caption in enumerate(captions or []):
        left = LABEL_WIDTH + GAP + col * (tile_w + GAP)
        draw.text((left, GAP), _fit(caption, font, tile_w), fill=0, font=font)
    for row, (label, roi_THW) in enumerate(zip(labels, rois, strict=True)):
        top = header + GAP + row * row_h
        draw.text((GAP, top + 2), _fit(label, font, LABEL_WIDTH - GAP), fill=0, font=font)
        shown = np.unique(np.linspace(0, len(roi_THW) - 1, n_frames).round().astype(int))
        if captions is None:
            draw.text((GAP, top + 16), f"{len(roi_THW)} frames", fill=96, font=font)
        for col, t in enumerate(shown):
            left = LABEL_WIDTH + GAP + col * (tile_w + GAP)
            sheet.paste(Image.fromarray(np.ascontiguousarray(roi_THW[t])), (left, top))
            if captions is None:
                draw.text((left, top + tile_h + 1), f"t={t}", fill=96, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


def _fit(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """`text`, shortened with an ellipsis in the middle (clip ids differ at both ends)."""
    if font.getlength(text) <= width:
        return text
    keep = len(text)
    while (
        keep > 1 and font.getlength(f"{text[: keep // 2]}…{text[len(text) - keep // 2 :]}") > width
    ):
        keep -= 1
    return f"{text[: keep // 2]}…{text[len(text) - keep // 2 :]}"
