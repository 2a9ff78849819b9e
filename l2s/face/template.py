"""The 68-point mean face that mouth crops are aligned to, and how it was made.

Letters in shape names: N faces, K landmarks (68, iBUG order).

MEAN_FACE_K2 is the generalised-Procrustes mean (similarity alignment, 10 iterations) of the
dlib 68-point landmarks of every frame of the five real fixture clips (691 frames, five
speakers; ../shared/fixtures/real), made left-right symmetric by averaging it with its mirror
image, then put in a canonical frame: the eye centres level, 1 unit apart, their midpoint at the
origin, y pointing down. Regenerate with `python -m l2s.face.template VIDEO...`.
Only its eyes and nose steer the alignment (see `l2s.face.roi`), so a few speakers suffice: a
similarity transform has four degrees of freedom, and what matters is a frontal, symmetric shape.
"""

from __future__ import annotations

import sys

import numpy as np

# Landmark index of each point's mirror image (iBUG 68-point order).
MIRROR_K = np.array(
    [
        *range(16, -1, -1),  # jaw
        *range(26, 16, -1),  # brows
        *(27, 28, 29, 30, 35, 34, 33, 32, 31),  # nose
        *(45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40),  # eyes
        *(54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55),  # outer lips
        *(64, 63, 62, 61, 60, 67, 66, 65),  # inner lips
    ]
)
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)

MEAN_FACE_K2 = np.array(
    [
        [-1.1299, 0.0807],
        [-1.1128, 0.3752],
        [-1.0698, 0.6681],
        [-1.0149, 0.9559],
        [-0.9250, 1.2296],
        [-0.7680, 1.4677],
        [-0.5541, 1.6599],
        [-0.2949, 1.8016],
        [0.0000, 1.8464],
        [0.2949, 1.8016],
        [0.5541, 1.6599],
        [0.7680, 1.4677],
        [0.9250, 1.2296],
        [1.0149, 0.9559],
        [1.0698, 0.6681],
        [1.1128, 0.3752],
        [1.1299, 0.0807],
        [-0.9069, -0.2229],
        [-0.7762, -0.3646],
        [-0.5848, -0.4208],
        [-0.3799, -0.4024],
        [-0.1896, -0.3233],
        [0.1896, -0.3233],
        [0.3799, -0.4024],
        [0.5848, -0.4208],
        [0.7762, -0.3646],
        [0.9069, -0.2229],
        [-0.0000, -0.0664],
        [0.0000, 0.1143],
        [0.0000, 0.2938],
        [0.0000, 0.4788],
        [-0.2176, 0.6485],
        [-0.1113, 0.6797],
        [0.0000, 0.7088],
        [0.1113, 0.6797],
        [0.2176, 0.6485],
        [-0.6897, 0.0077],
        [-0.5714, -0.0641],
        [-0.4288, -0.0651],
        [-0.3005, 0.0209],
        [-0.4346, 0.0491],
        [-0.5750, 0.0516],
        [0.3005, 0.0209],
        [0.4288, -0.0651],
        [0.5714, -0.0641],
        [0.6897, 0.0077],
        [0.5750, 0.0516],
        [0.4346, 0.0491],
        [-0.4164, 1.1054],
        [-0.2658, 0.9763],
        [-0.1119, 0.9134],
        [0.0000, 0.9410],
        [0.1119, 0.9134],
        [0.2658, 0.9763],
        [0.4164, 1.1054],
        [0.2713, 1.2303],
        [0.1210, 1.2879],
        [0.0000, 1.2996],
        [-0.1210, 1.2879],
        [-0.2713, 1.2303],
        [-0.3414, 1.0984],
        [-0.1127, 1.0327],
        [0.0000, 1.0395],
        [0.1127, 1.0327],
        [0.3414, 1.0984],
        [0.1141, 1.1229],
        [0.0000, 1.1331],
        [-0.1141, 1.1229],
    ]
)


def similarity_fit(src_NK2: np.ndarray, dst_K2: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking each src to dst.

    Returns params_N4 = (a, b, tx, ty) with x' = a·x − b·y + tx, y' = b·x + a·y + ty
    (Umeyama's closed form without reflection). Linear in its parameters, so averaging
    parameters over time averages transforms.
    """
    src_mean_N2 = src_NK2.mean(axis=1)
    dst_mean_2 = dst_K2.mean(axis=0)
    p_NK2 = src_NK2 - src_mean_N2[:, None]
    q_K2 = dst_K2 - dst_mean_2
    norm_N = (p_NK2**2).sum(axis=(1, 2))
    a_N = (p_NK2 * q_K2).sum(axis=(1, 2)) / norm_N
    b_N = (p_NK2[..., 0] * q_K2[:, 1] - p_NK2[..., 1] * q_K2[:, 0]).sum(axis=1) / norm_N
    tx_N = dst_mean_2[0] - (a_N * src_mean_N2[:, 0] - b_N * src_mean_N2[:, 1])
    ty_N = dst_mean_2[1] - (b_N * src_mean_N2[:, 0] + a_N * src_mean_N2[:, 1])
    return np.stack([a_N, b_N, tx_N, ty_N], axis=1)


def params_to_matrix(params_N4: np.ndarray) -> np.ndarray:
    """(a, b, tx, ty) → 2×3 affine matrices matrix_N23 (OpenCV's warpAffine layout)."""
    a, b, tx, ty = params_N4.T
    return np.stack([np.stack([a, -b, tx], axis=1), np.stack([b, a, ty], axis=1)], axis=1)


def apply_affine(matrix_N23: np.ndarray, points_NK2: np.ndarray) -> np.ndarray:
    """Map points through per-item 2×3 affine matrices."""
    return points_NK2 @ matrix_N23[:, :, :2].transpose(0, 2, 1) + matrix_N23[:, None, :, 2]


def canonical(shape_K2: np.ndarray) -> np.ndarray:
    """Eye centres level and 1 apart, their midpoint at the origin."""
    left, right = shape_K2[LEFT_EYE].mean(axis=0), shape_K2[RIGHT_EYE].mean(axis=0)
    dst = np.array([[-0.5, 0.0], [0.5, 0.0]])
    params = similarity_fit(np.stack([left, right])[None], dst)
    return apply_affine(params_to_matrix(params), shape_K2[None])[0]


def procrustes_mean(landmarks_NK2: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Generalised Procrustes mean of many 68-point shapes, symmetric, in the canonical frame."""
    landmarks_NK2 = np.asarray(landmarks_NK2, dtype=np.float64)
    mean_K2 = canonical(landmarks_NK2[0])
    for _ in range(iterations):
        aligned_NK2 = apply_affine(
            params_to_matrix(similarity_fit(landmarks_NK2, mean_K2)), landmarks_NK2
        )
        mean_K2 = canonical(aligned_NK2.mean(axis=0))
    mirrored_K2 = mean_K2[MIRROR_K] * np.array([-1.0, 1.0])
    return canonical((mean_K2 + mirrored_K2) / 2)


def _main(paths: list[str]) -> None:
    from l2s.face.detect import detect_landmarks
    from l2s.video import read_frames

    shapes = [detect_landmarks(read_frames(path)).landmarks_TK2 for path in paths]
    landmarks_NK2 = np.concatenate(shapes)
    mean_K2 = procrustes_mean(landmarks_NK2)
    print(f"# {len(landmarks_NK2)} frames from {len(paths)} clips")
    print("MEAN_FACE_K2 = np.array(\n    [")
    for x, y in mean_K2:
        print(f"        [{x:.4f}, {y:.4f}],")
    print("    ]\n)")


if __name__ == "__main__":
    _main(sys.argv[1:])
