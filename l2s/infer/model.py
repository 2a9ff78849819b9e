"""`SpeechModel`: a trained checkpoint's network, its speaker table, the grammar its lips are read
with and its URI; mouth ROIs → log-mel and the lip-read text.

    model = SpeechModel.load("out/runs/tiny")            # a run directory or one checkpoint
    mel_MF = model.mel(roi_THW, model.speaker("s01"))    # a named training speaker's voice
    said = model.speech([roi_a, roi_b], [voice_a, None]) # clips of any length, windows batched
    said[0].mel_MF, said[0].text                         # the mel, and what the lips were read to say

Every clip runs over the model windows of `l2s.infer.windows`, whoever calls. The CTC head's
log-probabilities are cross-faded over the windows like the mels and read once per clip: with the
checkpoint's grammar (a beam search, `l2s.models.grammar`) when it has one, greedily otherwise. A
text-conditioned model hears each window's own reading (or, for the oracle, a given transcript),
never the clip's transcript unless asked. A model with a flow head samples its mel (`FlowSampling`:
steps, classifier-free guidance on video and text, and optionally a recognizer's pull toward the
lip-read text).

Letters in shape names: T video frames, H×W pixels, M mel bands, F mel frames, D embedding size,
V CTC vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from l2s.config import MELS_PER_FRAME, VIDEO
from l2s.infer.checkpoint import grammar_of, model_of, read_model, resolve
from l2s.infer.speakers import SpeakerTable
from l2s.infer.windows import WINDOW, WINDOWS_PER_PASS, blend_windows, window_starts
from l2s.models.asr import SpeechRecognizer
from l2s.models.flow import sample
from l2s.models.frontend import crop, normalize_video
from l2s.models.grammar import Grammar, read_text
from l2s.models.lip2speech import Encoded, Lip2Speech, Lip2SpeechOutput
from l2s.models.losses import ctc_loss
from l2s.models.text import encode_batch


@dataclass(frozen=True)
class WindowOutput:
    """One model window's mel and CTC log-probabilities."""

    mel_MF: np.ndarray
    log_probs_VT: np.ndarray


@dataclass(frozen=True, kw_only=True)
class FlowSampling:
    """How a model with a flow head samples its mel (`l2s.models.flow.sample`).

    Guidance weights are classifier-free: 1 is the plain conditional velocity, above 1 pushes away
    from the unconditional one; `video_guidance` contrasts the clip's features with none,
    `text_guidance` (text-conditioned models) the clip with its reading against the clip without
    text. `asr_scale` > 0 steers every step toward the lip-read text with the gradient of a speech
    recognizer's CTC loss (`SpeechModel.guide`), normalised per clip.
    """

    steps: int = 16
    video_guidance: float = 1.0
    text_guidance: float = 1.0
    asr_scale: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 64:
            raise ValueError(f"steps must lie in [1, 64], got {self.steps}")
        if self.asr_scale < 0:
            raise ValueError(f"asr_scale must be >= 0, got {self.asr_scale}")


@dataclass(frozen=True)
class Speech:
    """One clip's mel and the text its lips were read to say."""

    mel_MF: np.ndarray
    text: str


@dataclass
class SpeechModel:
    network: Lip2Speech
    speakers: SpeakerTable
    checkpoint: str  # the URI it was loaded from (a run directory's latest, when loaded)
    grammar: Grammar | None = None  # how the lips are read (None: greedily)
    sampling: FlowSampling = field(default_factory=FlowSampling)  # a flow head's settings
    guide: SpeechRecognizer | None = None  # steers a flow head toward the text (asr_scale)

    @classmethod
    def load(cls, checkpoint: str, device: str = "cpu") -> SpeechModel:
        uri = resolve(checkpoint)
        saved = read_model(uri)
        return cls(
            model_of(saved, device),
            SpeakerTable.from_dict(saved["speakers"]),
            uri,
            grammar_of(saved),
        )

    def speaker(self, name: str) -> np.ndarray | None:
        """The train-split mean embedding of a speaker the model was trained on (None otherwise)."""
        return self.speakers.embedding(name)

    def mel(self, roi_THW: np.ndarray, speaker_D: np.ndarray | None) -> np.ndarray:
        """96×96 uint8 mouth ROIs at 25 fps → log-mel M×(4·T) (centre 88×88 crop, as in validation)."""
        return self.mels([roi_THW], [speaker_D])[0]

    def mels(
        self,
        rois: Sequence[np.ndarray],
        speakers: Sequence[np.ndarray | None],
        per_pass: int = WINDOWS_PER_PASS,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """`speech` without the text."""
        return [said.mel_MF for said in self.speech(rois, speakers, per_pass, progress)]

    def read(self, log_probs_VT: np.ndarray) -> str:
        """The text in a clip's CTC log-probabilities (the grammar's beam search, or greedy)."""
        return read_text(log_probs_VT.T, self.grammar)

    def speech(
        self,
        rois: Sequence[np.ndarray],
        speakers: Sequence[np.ndarray | None],
        per_pass: int = WINDOWS_PER_PASS,
        progress: bool = False,
        texts: Sequence[str] | None = None,
    ) -> list[Speech]:
        """Clips of any length → a mel and a text each: every clip is cut into its model windows,
        the windows of all clips run in padded forward passes of up to `per_pass` windows
        (`window_outputs`), and each clip's windows are cross-faded back into one mel of 4·T
        frames and one CTC reading. `texts`: what a text-conditioned model hears instead of the
        lips' reading (the transcript, for an oracle), one per clip of at most one window."""
        if len(rois) != len(speakers):
            raise ValueError(f"{len(rois)} clips but {len(speakers)} speaker embeddings")
        starts = [window_starts(len(roi_THW)) for roi_THW in rois]
        if texts is not None and any(len(clip_starts) > 1 for clip_starts in starts):
            raise ValueError(
                f"a given text conditions clips of at most one window ({WINDOW} frames)"
            )
        windows = [
            (roi_THW[start : start + WINDOW], speaker_D, None if texts is None else texts[n])
            for n, (roi_THW, speaker_D, clip_starts) in enumerate(
                zip(rois, speakers, starts, strict=True)
            )
            for start in clip_starts
        ]
        passes = range(0, len(windows), per_pass)
        outputs: list[WindowOutput] = []
        for first in tqdm(passes, desc="model", unit="pass", leave=False, disable=not progress):
            batch = windows[first : first + per_pass]
            given = None if texts is None else [t for _, _, t in batch]
            outputs += self.window_outputs(
                [w for w, _, _ in batch], [s for _, s, _ in batch], given
            )
        in_order = iter(outputs)
        said = []
        for roi_THW, clip_starts in zip(rois, starts, strict=True):
            clip = [next(in_order) for _ in clip_starts]
            said.append(self.blend(clip, clip_starts, len(roi_THW)))
        return said

    def blend(self, outputs: list[WindowOutput], starts: list[int], n_frames: int) -> Speech:
        """A clip's windows → its mel (cross-faded) and its text (read from the cross-faded CTC)."""
        mel_MF = blend_windows([o.mel_MF for o in outputs], starts, n_frames)
        log_probs_VT = blend_windows([o.log_probs_VT for o in outputs], starts, n_frames, 1)
        return Speech(mel_MF, self.read(log_probs_VT))

    @torch.no_grad()
    def window_outputs(
        self,
        rois: Sequence[np.ndarray],
        speakers: Sequence[np.ndarray | None],
        texts: Sequence[str] | None = None,
    ) -> list[WindowOutput]:
        """Clips of at most one window each in one forward pass (the endpoint's batches of the
        windows of concurrent requests): the ROIs are padded to the longest clip, the model masks
        the padding, and each mel is cut back to 4·T. A missing speaker is the zero vector, the
        model's "no speaker" input. A text-conditioned model hears each window's reading, or
        `texts` when given; a model with a flow head samples its mel (`sampling`)."""
        if len(rois) != len(speakers):
            raise ValueError(f"{len(rois)} clips but {len(speakers)} speaker embeddings")
        if max(len(roi_THW) for roi_THW in rois) > WINDOW:
            raise ValueError(f"a clip over one model window ({WINDOW} frames): use `speech`")
        device = self.network.mel_mean_M.device
        lengths = [len(roi_THW) for roi_THW in rois]
        size = VIDEO.crop_size
        video_BTHW = torch.zeros(len(rois), max(lengths), size, size, dtype=torch.uint8)
        for b, roi_THW in enumerate(rois):
            video_BTHW[b, : lengths[b]] = torch.from_numpy(
                np.ascontiguousarray(crop(roi_THW, None))
            )
        lengths_B = None if len(set(lengths)) == 1 else torch.tensor(lengths, device=device)
        speaker_BD = None
        if any(s is not None for s in speakers):
            zeros_D = np.zeros(self.network.cfg.speaker_dim, np.float32)
            speaker_BD = torch.from_numpy(
                np.stack([zeros_D if s is None else np.asarray(s, np.float32) for s in speakers])
            ).to(device)
        encoded = self.network.encode(normalize_video(video_BTHW).to(device), lengths_B, speaker_BD)
        log_probs_BTV = encoded.ctc_logits_BTV.float().log_softmax(-1).cpu().numpy()
        text = ()
        texted, flowing = self.network.cfg.text_conditioning, self.network.flow is not None
        if texts is None and (texted or flowing):
            texts = [read_text(log_probs_BTV[b, :n], self.grammar) for b, n in enumerate(lengths)]
        if texted:
            text = tuple(t.to(device) for t in encode_batch(list(texts)))
        output = self.network.decode(encoded, *text)
        mel_BMF = output.mel_post_BMF
        if flowing:
            mel_BMF = self._flow_mel(encoded, output, list(texts))
        mel_BMF = mel_BMF.float().cpu().numpy()
        return [
            WindowOutput(mel_BMF[b, :, : n * MELS_PER_FRAME], log_probs_BTV[b, :n].T)
            for b, n in enumerate(lengths)
        ]

    def _flow_mel(
        self, encoded: Encoded, output: Lip2SpeechOutput, texts: list[str]
    ) -> torch.Tensor:
        """The flow head's sample B×M×F, guided as `sampling` says."""
        cfg, network = self.sampling, self.network
        full_BFC = output.flow_cond_BFC
        mask_BF = None
        if encoded.mask_BT is not None:
            mask_BF = encoded.mask_BT.repeat_interleave(MELS_PER_FRAME, dim=1)
        # v = v(∅) + w_v (v(V) − v(∅)) + w_t (v(V, T) − v(V, ∅)), as a weighted sum of velocities.
        conds = [(torch.zeros_like(full_BFC), 1.0 - cfg.video_guidance)]
        if network.cfg.text_conditioning:
            no_text = tuple(t.to(full_BFC.device) for t in encode_batch([""] * len(texts)))
            conds.append(
                (
                    network.decode(encoded, *no_text).flow_cond_BFC,
                    cfg.video_guidance - cfg.text_guidance,
                )
            )
            conds.append((full_BFC, cfg.text_guidance))
        else:
            conds.append((full_BFC, cfg.video_guidance))
        conds = [c for c in conds if c[1] != 0.0]
        steer = None
        if cfg.asr_scale > 0:
            if self.guide is None:
                raise ValueError("sampling.asr_scale > 0 needs a recognizer in SpeechModel.guide")
            steer = self._steer(texts, encoded.lengths_B * MELS_PER_FRAME, cfg.asr_scale)
        generator = torch.Generator(full_BFC.device).manual_seed(cfg.seed)
        z_BFM = sample(
            network.flow, conds, mask_BF, cfg.steps, network.cfg.n_mels, generator, steer
        )
        return network.standardized_to_mel(z_BFM)

    def _steer(self, texts: list[str], mel_lengths_B: torch.Tensor, scale: float):
        """A velocity toward `texts`: minus the recognizer's CTC-loss gradient at the current
        estimate of the clean mel, scaled to `scale` standard deviations per clip."""
        targets_BL, target_lengths_B = (t.to(mel_lengths_B.device) for t in encode_batch(texts))
        network, guide = self.network, self.guide

        def steer(z_BFM: torch.Tensor, z1_BFM: torch.Tensor, t: float) -> torch.Tensor:
            with torch.enable_grad():
                z1 = z1_BFM.detach().requires_grad_(True)
                logits_BTV, lengths_B = guide(network.standardized_to_mel(z1), mel_lengths_B)
                loss = ctc_loss(logits_BTV, lengths_B, targets_BL, target_lengths_B)
                if loss is None:
                    return torch.zeros_like(z_BFM)
                (grad_BFM,) = torch.autograd.grad(loss, z1)
            rms_B11 = grad_BFM.square().mean(dim=(1, 2), keepdim=True).sqrt()
            return -scale * grad_BFM / (rms_B11 + 1e-8)

        return steer

    def mean_mel(self, n_frames: int) -> np.ndarray:
        """The constant mean-mel predictor (a baseline): the training mel mean at every frame."""
        mean_M = self.network.mel_mean_M.float().cpu().numpy()
        return np.repeat(mean_M[:, None], 4 * n_frames, axis=1)
