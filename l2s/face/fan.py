"""The GPU backend: S3FD face detection + 2D-FAN-4 landmarks from the `face-alignment` package.

Letters in shape names: B batch, C colour channels, H×W pixels, K landmarks (68), N faces.

face-alignment downloads its weights when its `FaceAlignment` object is built; l2s never lets it.
The networks are built from the package's own classes and loaded from files the user staged:

    <weights_dir>/s3fd-619a316812.pth        (S3FD detector)
    <weights_dir>/2DFAN4-11f355bf06.pth.tar  (2D-FAN-4 landmark network)

`weights_dir` defaults to torch's hub checkpoint directory ($TORCH_HOME/hub/checkpoints, else
~/.cache/torch/hub/checkpoints): where face-alignment itself caches them, so a machine that once
ran face-alignment online already has them. The file names are those face-alignment 1.5.0
downloads (its `models_urls`); they carry a hash prefix that changes when the weights do.

Detection reuses the package's S3FD decoding and NMS; the FAN crop and heatmap decoding are done
here, batched and sub-pixel (face-alignment rounds landmarks to whole pixels and JIT-compiles its
decoder for ~12 s per process). tests/test_face.py checks both against `FaceAlignment` itself.

Installing: face-alignment declares a dependency on `opencv-python`, which would clash with the
project's headless OpenCV, so install it with `pip install --no-deps face-alignment==1.5.0`, then
`pip install scikit-image==0.26.0` (its modules import skimage; that pulls imageio and tifffile);
numba, scipy, tqdm and packaging already come with the project's dependencies.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from l2s.face.backend import FaceError

S3FD_FILE = "s3fd-619a316812.pth"
FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
FACE_ALIGNMENT_VERSION = "1.5.0"
# FAN's input crop: a square of side 200·scale around the box centre, with scale = (w + h) / 195
# and the centre raised by 0.12·h (face-alignment's REFERENCE_SCALE, SCALE_FACTOR and
# CENTER_Y_OFFSET: the framing FAN was trained with), resampled to 256×256; heatmaps are 64×64.
CROP = 256
HEATMAP = 64
REFERENCE_SCALE = 195.0
SCALE_FACTOR = 200.0
CENTER_Y_OFFSET = 0.12
# S3FD's own post-processing: non-maximum suppression at IoU 0.3, keep scores above 0.5.
NMS_IOU = 0.3
SCORE_THRESHOLD = 0.5


def default_weights_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def staged_weights(weights_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Paths of the staged S3FD and FAN weight files; FaceError naming what is missing and where."""
    directory = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    s3fd_path, fan_path = directory / S3FD_FILE, directory / FAN_FILE
    missing = [p for p in (s3fd_path, fan_path) if not p.is_file()]
    if missing:
        raise FaceError(
            f"face_alignment backend: weights not staged; missing {', '.join(map(str, missing))}. "
            f"Put {S3FD_FILE} and {FAN_FILE} (the files face-alignment {FACE_ALIGNMENT_VERSION} "
            f"downloads, see face_alignment.api.models_urls and "
            f"face_alignment.detection.sfd.sfd_detector.models_urls) in {directory}, or point "
            "FaceConfig.weights_dir (or $TORCH_HOME) at the directory holding them. l2s never "
            "downloads weights; the 'dlib' backend needs none."
        )
    return s3fd_path, fan_path


def stage_random_weights(directory: str | Path, seed: int = 0) -> Path:
    """Write S3FD and 2D-FAN-4 weights of the right architecture but random values into
    `directory`, for tests and throughput measurements (nothing they find means anything).

    The detection heads are set so that the untrained S3FD reports faces (the fc7 scale's face
    logit high everywhere, the other scales' low): the whole path runs, accuracy is not judged."""
    import torch

    _require_face_alignment()
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    detector = s3fd()
    with torch.no_grad():
        for scale in ("conv3_3_norm", "conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2"):
            conf = getattr(detector, f"{scale}_mbox_conf")
            loc = getattr(detector, f"{scale}_mbox_loc")
            conf.weight.zero_()
            loc.weight.zero_()
            loc.bias.zero_()
            face = 10.0 if scale == "fc7" else -10.0
            conf.bias.fill_(-face)
            conf.bias[-1] = face
    torch.save(detector.state_dict(), directory / S3FD_FILE)
    torch.save(FAN(4).state_dict(), directory / FAN_FILE)
    return directory


def _require_face_alignment() -> None:
    if importlib.util.find_spec("face_alignment") is None:
        raise FaceError(
            "face_alignment backend needs the face-alignment package: pip install --no-deps "
            f"face-alignment=={FACE_ALIGNMENT_VERSION}, then pip install scikit-image==0.26.0 "
            "(--no-deps: it would pull opencv-python, which clashes with opencv-python-headless)"
        )


class FanDetector:
    """S3FD on a downscaled frame, FAN on a 256×256 crop of the native frame, batched on `device`."""

    name = "face_alignment"

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        device: str | None = None,
        long_side: int = 640,
        batch_size: int = 32,
        flip: bool = True,
    ) -> None:
        s3fd_path, fan_path = staged_weights(weights_dir)
        _require_face_alignment()
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd
        from face_alignment.models import FAN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.long_side = long_side
        self.batch_size = batch_size
        # Averaging with the heatmaps of the mirrored crop is face-alignment's default: it
        # costs a second pass and removes a left/right bias of the network.
        self.flip = flip
        self._detector = _load(s3fd(), s3fd_path, self.device)
        self._fan = _load(FAN(4), fan_path, self.device)

    def find_faces(self, images_HWC: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch
        from face_alignment.detection.sfd.bbox import nms
        from face_alignment.detection.sfd.detect import batch_detect

        found: list[np.ndarray] = []
        for start in range(0, len(images_HWC), self.batch_size):
            chunk = images_HWC[start : start + self.batch_size]
            height, width = chunk[0].shape[:2]
            if any(image.shape[:2] != (height, width) for image in chunk):
                raise ValueError("find_faces needs frames of one size within a batch")
            scale = min(1.0, self.long_side / max(height, width))
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small_BHWC = np.stack(
                [
                    cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
                    for image in chunk
                ]
            )
            batch_BCHW = torch.from_numpy(small_BHWC).permute(0, 3, 1, 2).float()
            candidates = batch_detect(self._detector, batch_BCHW, device=self.device)
            for i in range(len(chunk)):
                boxes = np.asarray(candidates[i], dtype=np.float32).reshape(-1, 5)
                if len(boxes):
                    boxes = boxes[nms(boxes, NMS_IOU)]
                    boxes = boxes[boxes[:, 4] > SCORE_THRESHOLD]
                found.append(boxes[:, :4] * np.float32(width / size[0]))
        return found

    def fit_landmarks(self, images_HWC: Sequence[np.ndarray], boxes_N4: np.ndarray) -> np.ndarray:
        import torch
        from face_alignment.utils import flip

        boxes_N4 = np.asarray(boxes_N4, dtype=np.float64)
        centre_N2 = (boxes_N4[:, :2] + boxes_N4[:, 2:]) / 2
        centre_N2[:, 1] -= (boxes_N4[:, 3] - boxes_N4[:, 1]) * CENTER_Y_OFFSET
        side_N = SCALE_FACTOR * (boxes_N4[:, 2:] - boxes_N4[:, :2]).sum(axis=1) / REFERENCE_SCALE
        origin_N2 = centre_N2 - side_N[:, None] / 2
        landmarks_NK2 = np.empty((len(images_HWC), 68, 2), dtype=np.float32)
        for start in range(0, len(images_HWC), self.batch_size):
            stop = min(start + self.batch_size, len(images_HWC))
            crops_BHWC = np.stack(
                [_crop(images_HWC[i], origin_N2[i], side_N[i], CROP) for i in range(start, stop)]
            )
            batch_BCHW = (
                torch.from_numpy(crops_BHWC).permute(0, 3, 1, 2).to(self.device).float() / 255.0
            )
            with torch.inference_mode():
                heatmaps_BKHW = self._fan(batch_BCHW)[-1]
                if self.flip:
                    heatmaps_BKHW = heatmaps_BKHW + flip(
                        self._fan(flip(batch_BCHW))[-1], is_label=True
                    )
            cells_BK2 = decode_heatmaps(heatmaps_BKHW.float().cpu().numpy())
            # Heatmap cell centre u + 0.5 lies at origin + (u + 0.5)·side/64 in continuous
            # source coordinates; −0.5 turns that into pixel-index coordinates like dlib's.
            landmarks_NK2[start:stop] = (
                origin_N2[start:stop, None]
                + (cells_BK2 + 0.5) * (side_N[start:stop, None, None] / HEATMAP)
                - 0.5
            )
        return landmarks_NK2


def decode_heatmaps(heatmaps_BKHW: np.ndarray) -> np.ndarray:
    """Heatmap peaks in cell coordinates (x, y), nudged a quarter cell towards the higher
    neighbour as face-alignment does, but kept sub-pixel (face-alignment rounds to ints)."""
    batch, k, height, width = heatmaps_BKHW.shape
    flat_BKX = heatmaps_BKHW.reshape(batch, k, -1)
    peak_BK = flat_BKX.argmax(axis=-1)
    x_BK, y_BK = (peak_BK % width).astype(np.int64), (peak_BK // width).astype(np.int64)
    inner_BK = (x_BK > 0) & (x_BK < width - 1) & (y_BK > 0) & (y_BK < height - 1)
    xc, yc = np.clip(x_BK, 1, width - 2), np.clip(y_BK, 1, height - 2)
    b_idx, k_idx = np.indices((batch, k))
    dx = heatmaps_BKHW[b_idx, k_idx, yc, xc + 1] - heatmaps_BKHW[b_idx, k_idx, yc, xc - 1]
    dy = heatmaps_BKHW[b_idx, k_idx, yc + 1, xc] - heatmaps_BKHW[b_idx, k_idx, yc - 1, xc]
    cells_BK2 = np.stack([x_BK, y_BK], axis=-1).astype(np.float64)
    cells_BK2 += np.where(inner_BK[..., None], 0.25 * np.sign(np.stack([dx, dy], axis=-1)), 0.0)
    return cells_BK2


def _crop(image_HWC: np.ndarray, origin_2: np.ndarray, side: float, size: int) -> np.ndarray:
    """The square [origin, origin + side) of the image resampled to size×size (black outside)."""
    scale = size / side
    matrix_23 = np.array(
        [
            [scale, 0.0, (0.5 - origin_2[0]) * scale - 0.5],
            [0.0, scale, (0.5 - origin_2[1]) * scale - 0.5],
        ]
    )
    return cv2.warpAffine(
        np.ascontiguousarray(image_HWC),
        matrix_23,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def _load(net, path: Path, device: str):
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
        net.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise FaceError(f"{path}: not a usable {type(net).__name__} checkpoint ({e})") from e
    return net.to(device).eval()
