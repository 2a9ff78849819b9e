"""A re-drawn mouth ROI back into the frame it was cut from.

The ROI was cut by a similarity transform (`l2s.face.roi`: source pixels → ROI pixels); pasting
warps the re-drawn ROI and a feathered mask through its inverse, at the frame's own resolution,
and blends only the brightness: the ROI is grayscale (the luma of the frame, as
`cv2.COLOR_RGB2GRAY` weighs it), so the frame keeps its own colour (YCrCb's Cr and Cb) and only
its luma changes where the mask is on.

Letters in shape names: H×W pixels, C colour channels (RGB); a transform_23 is a 2×3 affine
matrix (OpenCV's warpAffine layout, pixel centres at integer coordinates).
"""

from __future__ import annotations

import cv2
import numpy as np

from l2s.config import VIDEO

# The mask fades over this many ROI pixels, inside the ROI's edges and around the mask's top.
FEATHER = 8


def feather_mask(top: int, size: int = VIDEO.roi_size, feather: int = FEATHER) -> np.ndarray:
    """mask_HW (float32 in [0, 1]): on over the re-drawn region (rows `top`… of the ROI), off at
    the ROI's edges, with `feather` pixels of smooth fall between (a Gaussian edge of deviation
    feather / 4). Around `top` it falls into the rows the generator left as they were."""
    mask_HW = np.zeros((size, size), np.float32)
    mask_HW[top : size - feather, feather : size - feather] = 1.0
    return cv2.GaussianBlur(mask_HW, (0, 0), sigmaX=feather / 4, borderType=cv2.BORDER_CONSTANT)


def scale_transform(transform_23: np.ndarray, scale: float) -> np.ndarray:
    """A transform from frames downscaled by `scale` (decoded = scale · source, pixel centres
    kept, as an area resize does) → the same transform from source pixels."""
    linear_22 = transform_23[:, :2] * scale
    offset_2 = transform_23[:, 2] + transform_23[:, :2] @ np.full(2, (scale - 1) / 2)
    return np.concatenate([linear_22, offset_2[:, None]], axis=1)


def paste(
    frame_HWC: np.ndarray, drawn_HW: np.ndarray, transform_23: np.ndarray, mask_HW: np.ndarray
) -> np.ndarray:
    """The frame with the ROI `drawn_HW` blended in where `mask_HW` is on (a new array)."""
    height, width = frame_HWC.shape[:2]
    size = drawn_HW.shape[0]
    inverse_23 = cv2.invertAffineTransform(transform_23)
    corners_42 = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float)
    corners_42 = corners_42 @ inverse_23[:, :2].T + inverse_23[:, 2]
    x0, y0 = np.maximum(np.floor(corners_42.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners_42.max(axis=0)).astype(int) + 2, (width, height))
    out_HWC = frame_HWC.copy()
    if x1 <= x0 or y1 <= y0:
        return out_HWC
    # Warp only the box the ROI covers: the same inverse, moved to the box's origin.
    box_23 = inverse_23 - np.array([[0, 0, x0], [0, 0, y0]], float)
    box_size = (x1 - x0, y1 - y0)
    luma_hw = cv2.warpAffine(drawn_HW.astype(np.float32), box_23, box_size, flags=cv2.INTER_LINEAR)
    alpha_hw = cv2.warpAffine(mask_HW, box_23, box_size, flags=cv2.INTER_LINEAR, borderValue=0)
    ycrcb_hwC = cv2.cvtColor(np.ascontiguousarray(frame_HWC[y0:y1, x0:x1]), cv2.COLOR_RGB2YCrCb)
    blended_hw = alpha_hw * luma_hw + (1 - alpha_hw) * ycrcb_hwC[..., 0]
    ycrcb_hwC[..., 0] = np.clip(np.round(blended_hw), 0, 255).astype(np.uint8)
    out_HWC[y0:y1, x0:x1] = cv2.cvtColor(ycrcb_hwC, cv2.COLOR_YCrCb2RGB)
    return out_HWC


def paste_clip(
    frames_THWC: np.ndarray, drawn_THW: np.ndarray, transform_T23: np.ndarray, top: int
) -> np.ndarray:
    """Every frame with its re-drawn ROI pasted in (`paste`, the mask of `feather_mask(top)`)."""
    mask_HW = feather_mask(top)
    return np.stack(
        [
            paste(f, d, m, mask_HW)
            for f, d, m in zip(frames_THWC, drawn_THW, transform_T23, strict=True)
        ]
    )
