"""Render a talking face: move the lips, jaw and eyelids of a real photograph along its landmarks.

A base face (l2s/synth/faces, built by l2s.synth.facebank) carries 68 dlib landmarks. For each
frame the mouth parameters (l2s.synth.visemes) move the lip, jaw and eyelid landmarks; the image
follows by a piecewise-affine warp over a Delaunay mesh of the landmarks (the classic landmark
morph: photographic texture, no learned model). The mouth cavity and teeth, which the closed-mouth
photo does not contain, are painted inside the inner-lip contour. A small head motion (similarity
transform) is applied last, to image and landmarks alike.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import cv2
import numpy as np
from scipy.spatial import Delaunay

SIZE = 256
UPPER_OUTER, LOWER_OUTER = [49, 50, 51, 52, 53], [55, 56, 57, 58, 59]
UPPER_INNER, LOWER_INNER = [61, 62, 63], [65, 66, 67]
CORNERS = [48, 54, 60, 64]
CHIN = list(range(4, 13))


@dataclass(frozen=True)
class Face:
    """A face photo (image_HWC, RGB uint8) and its 68 landmarks (landmarks_K2, pixels)."""

    image_HWC: np.ndarray
    landmarks_K2: np.ndarray


@dataclass(frozen=True, kw_only=True)
class Appearance:
    """Per-speaker look: which base photo, face width, skin tint, gamma and a side light."""

    face: int
    width: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    side_light: float = 0.0


@functools.cache
def face_bank() -> tuple[Face, ...]:
    folder = resources.files("l2s.synth") / "faces"
    faces = []
    for png in sorted(p for p in folder.iterdir() if p.name.endswith(".png")):
        image = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
        meta = json.loads((folder / png.name.replace(".png", ".json")).read_text())
        faces.append(Face(image, np.array(meta["landmarks"], dtype=np.float32)))
    if not faces:
        raise FileNotFoundError(f"no base faces in {folder}: run python -m l2s.synth.facebank")
    return tuple(faces)


def speaker_face(appearance: Appearance) -> Face:
    """The base photo under a speaker's appearance: a neutral, closed-mouth face."""
    bank = face_bank()
    base = bank[appearance.face % len(bank)]
    centre = base.landmarks_K2[[0, 16, 8, 27]].mean(0)
    matrix = np.array(
        [[appearance.width, 0, (1 - appearance.width) * centre[0]], [0, 1, 0]], dtype=np.float32
    )
    image = cv2.warpAffine(base.image_HWC, matrix, (SIZE, SIZE), borderMode=cv2.BORDER_REFLECT)
    landmarks = base.landmarks_K2 @ matrix[:, :2].T + matrix[:, 2]
    x = np.linspace(-1, 1, SIZE, dtype=np.float32)[None, :, None]
    light = 1 + appearance.side_light * x
    colour = (
        (image.astype(np.float32) / 255) ** appearance.gamma * np.array(appearance.tint) * light
    )
    image = np.clip(colour * 255, 0, 255).astype(np.uint8)
    return _close_mouth(Face(image, landmarks.astype(np.float32)))


def _mouth_frame(landmarks_K2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mouth centre, the unit vectors along and across the mouth, and half the mouth width."""
    centre = landmarks_K2[48:68].mean(0)
    along = landmarks_K2[54] - landmarks_K2[48]
    half_width = float(np.linalg.norm(along)) / 2
    along = along / (2 * half_width)
    across = np.array([-along[1], along[0]], dtype=np.float32)  # points down the face
    return centre, along, across, half_width


def _close_mouth(face: Face) -> Face:
    """Bring the base photo's lips together, so that 'open = 0' means a closed mouth."""
    points = face.landmarks_K2.copy()
    _, _, across, _ = _mouth_frame(points)
    gap_K = (points[LOWER_INNER[::-1]] - points[UPPER_INNER]) @ across
    shift = max(float(gap_K.mean()), 0.0) / 2
    points[UPPER_OUTER + UPPER_INNER] += shift * across
    points[LOWER_OUTER + LOWER_INNER] -= shift * across
    image = warp(face.image_HWC, face.landmarks_K2, points)
    return Face(image, points)


def pose_landmarks(
    face: Face, open_: float, width: float, round_: float, tuck: float, blink: float
) -> np.ndarray:
    """Landmarks of `face` with the mouth at (open, width, round, tuck) and the eyes `blink` closed."""
    points = face.landmarks_K2.copy()
    centre, along, across, half = _mouth_frame(points)
    local_a = (points[48:68] - centre) @ along / half
    # Lips open most at the centre, not at the corners.
    profile = np.clip(1 - local_a**2, 0, 1) ** 0.7
    scale = 1 + 0.22 * (width - 0.5) - 0.25 * round_
    points[48:68] += ((scale - 1) * local_a * half)[:, None] * along
    gap = 0.9 * half * open_
    pucker = 0.15 * half * round_
    rows = {i: i - 48 for i in range(48, 68)}
    for i in UPPER_OUTER + UPPER_INNER:
        lift = 0.35 * gap + (pucker if i in UPPER_OUTER else 0.0)
        points[i] -= lift * profile[rows[i]] * across
    for i in LOWER_OUTER + LOWER_INNER:
        # The lower lip rides on the jaw; for f/v it is drawn up and in under the upper teeth.
        drop = 0.65 * gap + (pucker if i in LOWER_OUTER else 0.0) - 0.18 * half * tuck
        points[i] += drop * profile[rows[i]] * across
    for i in CHIN:
        points[i] += 0.6 * gap * (1 - abs(i - 8) / 5) * across
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        points[upper] += 0.85 * blink * (points[lower] - points[upper])
    return points


@functools.cache
def _border_points() -> np.ndarray:
    edge = np.linspace(0, SIZE - 1, 5, dtype=np.float32)
    top = np.stack([edge, np.zeros_like(edge)], 1)
    bottom = np.stack([edge, np.full_like(edge, SIZE - 1)], 1)
    left = np.stack([np.zeros_like(edge[1:-1]), edge[1:-1]], 1)
    right = np.stack([np.full_like(edge[1:-1], SIZE - 1), edge[1:-1]], 1)
    return np.concatenate([top, bottom, left, right])


@functools.cache
def _mesh(source_bytes: bytes) -> np.ndarray:
    # Delaunay triangles of a face's landmarks + image border, cached per base face.
    source = np.frombuffer(source_bytes, dtype=np.float32).reshape(-1, 2)
    return Delaunay(np.concatenate([source, _border_points()])).simplices


def warp(image_HWC: np.ndarray, source_K2: np.ndarray, target_K2: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp moving `source_K2` landmarks to `target_K2` (image border fixed).

    Backward mapping: every destination pixel inside a moved triangle takes the source pixel
    given by that triangle's affine map; one cv2.remap over the moved region does the sampling.
    """
    source_K2 = np.ascontiguousarray(source_K2, dtype=np.float32)
    src = np.concatenate([source_K2, _border_points()])
    dst = np.concatenate([target_K2.astype(np.float32), _border_points()])
    triangles = _mesh(source_K2.tobytes())
    moved = np.abs(src - dst).max(1) > 1e-3
    triangles = triangles[moved[triangles].any(1)]
    if len(triangles) == 0:
        return image_HWC.copy()
    corners = dst[triangles]  # N×3×2
    x0, y0 = np.maximum(np.floor(corners.reshape(-1, 2).min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.reshape(-1, 2).max(0)).astype(int) + 1, SIZE)
    label = np.zeros((y1 - y0, x1 - x0), np.int32)
    fixed = np.round((corners - [x0, y0]) * 16).astype(np.int32)
    for k, polygon in enumerate(fixed):
        cv2.fillConvexPoly(label, polygon, k + 1, cv2.LINE_8, 4)
    # Per-triangle affine (destination → source), solved for all triangles at once.
    homogeneous = np.concatenate([corners, np.ones((len(triangles), 3, 1), np.float32)], 2)
    affine = np.linalg.solve(homogeneous, src[triangles])  # N×3×2
    ys, xs = np.nonzero(label)
    a = affine[label[ys, xs] - 1]
    gx, gy = (xs + x0).astype(np.float32), (ys + y0).astype(np.float32)
    map_x, map_y = np.meshgrid(
        np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
    )
    map_x[ys, xs] = gx * a[:, 0, 0] + gy * a[:, 1, 0] + a[:, 2, 0]
    map_y[ys, xs] = gx * a[:, 0, 1] + gy * a[:, 1, 1] + a[:, 2, 1]
    out = image_HWC.copy()
    out[y0:y1, x0:x1] = cv2.remap(
        image_HWC, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return out


def paint_mouth(image_HWC: np.ndarray, landmarks_K2: np.ndarray, tuck: float) -> np.ndarray:
    """Paint the cavity, teeth and tongue inside the inner-lip contour (anti-aliased)."""
    _, _, across, half = _mouth_frame(landmarks_K2)
    # Work on a crop around the lips only: full-frame float masks cost more than the warp.
    x0, y0 = np.maximum(np.floor(landmarks_K2[48:68].min(0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(landmarks_K2[48:68].max(0)).astype(int) + 3, SIZE)
    crop = image_HWC[y0:y1, x0:x1].astype(np.float32)
    points = landmarks_K2 - [x0, y0]

    def mask_of(polygon: np.ndarray) -> np.ndarray:
        mask = np.zeros(crop.shape[:2], np.float32)
        cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
        return mask[..., None]

    inner = _smooth_contour(points[60:68])
    cavity = mask_of(inner)
    # Cavity, tongue and teeth follow the speaker's skin brightness and lighting.
    brightness = float(image_HWC[tuple(np.round(landmarks_K2[33, ::-1]).astype(int))].mean()) / 150
    dark = np.array([45, 18, 20]) * brightness
    tongue = np.array([140, 65, 70]) * brightness
    top, bottom = inner[:, 1].min(), inner[:, 1].max()
    depth = np.clip(
        (np.arange(crop.shape[0], dtype=np.float32) - top) / max(bottom - top, 1.0), 0, 1
    )
    fill = dark + (tongue - dark) * (np.clip(depth - 0.55, 0, 1) * 1.5)[:, None, None]
    crop = crop * (1 - cavity) + fill * cavity
    upper = _smooth_contour(points[[60, 61, 62, 63, 64]], closed=False)
    teeth = mask_of(np.concatenate([upper, upper[::-1] + 0.12 * half * across]))
    # Upper teeth show inside an open mouth (more as it opens), and over the tucked lower lip
    # of f/v; they sit in the cavity's shade, so they are never paper white.
    gap = float(np.linalg.norm(points[62] - points[66])) / half
    teeth *= np.clip(cavity * np.clip(gap / 0.25, 0, 1) + tuck * mask_of(inner), 0, 1)
    enamel = np.array([185, 178, 168]) * min(brightness, 1.2) ** 0.5
    crop = crop * (1 - teeth) + enamel * teeth
    out = image_HWC.copy()
    out[y0:y1, x0:x1] = np.clip(crop, 0, 255).astype(np.uint8)
    return out


def _smooth_contour(points_N2: np.ndarray, closed: bool = True, per_segment: int = 6) -> np.ndarray:
    """Catmull-Rom spline through landmark points: lips are curves, not 8-sided polygons."""
    n = len(points_N2)
    if closed:
        padded = np.concatenate([points_N2[-1:], points_N2, points_N2[:2]])
        segments = n
    else:
        padded = np.concatenate([points_N2[:1], points_N2, points_N2[-1:]])
        segments = n - 1
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    curve = []
    for i in range(segments):
        p0, p1, p2, p3 = padded[i : i + 4]
        curve.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    if not closed:
        curve.append(points_N2[-1:])
    return np.concatenate(curve)


def head_motion(n_frames: int, rng: np.random.Generator, fps: int = 25) -> np.ndarray:
    """Smooth small head motion: per-frame (angle deg, dx px, dy px, scale) as motion_T4."""
    t = np.arange(n_frames) / fps
    amplitude = np.array([2.0, 3.0, 2.0, 0.02])
    motion = np.zeros((n_frames, 4))
    for k in range(4):
        for _ in range(3):
            freq, phase = rng.uniform(0.1, 0.6), rng.uniform(0, 2 * np.pi)
            motion[:, k] += amplitude[k] / 3 * np.sin(2 * np.pi * freq * t + phase)
    motion[:, 3] += 1
    return motion


def render(
    face: Face, params_P: np.ndarray, blink: float, motion_4: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (image_HWC, landmarks_K2) for mouth params (open, width, round, tuck)."""
    open_, width, round_, tuck = (float(x) for x in params_P)
    points = pose_landmarks(face, open_, width, round_, tuck, blink)
    image = warp(face.image_HWC, face.landmarks_K2, points)
    if open_ > 0.04 or tuck > 0.05:
        image = paint_mouth(image, points, tuck)
    angle, dx, dy, scale = motion_4
    centre = face.landmarks_K2[[0, 16, 8, 27]].mean(0)
    matrix = cv2.getRotationMatrix2D(
        (float(centre[0]), float(centre[1])), float(angle), float(scale)
    )
    matrix[:, 2] += (dx, dy)
    image = cv2.warpAffine(
        image, matrix, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    points = points @ matrix[:, :2].T + matrix[:, 2]
    return image, points.astype(np.float32)
