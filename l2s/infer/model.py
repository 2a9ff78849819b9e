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
never the clip's transcript unless asked. A model with a flow head samples its mel
(`l2s.infer.sampling`).

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
from l2s.infer.sampling import FlowSampling, flow_mel
from l2s.infer.speakers import SpeakerTable
from l2s.infer.windows import WINDOW, WINDOWS_PER_PASS, blend_windows, window_starts
from l2s.models.asr import SpeechRecognizer
from l2s.models.frontend import crop, normalize_video
from l2s.models.grammar import Grammar, read_text
from l2s.models.lip2speech import Lip2Speech
from l2s.models.text import encode_batch


@dataclass(frozen=True)
class WindowOutput:
    """One model window's mel and CTC log-probabilities."""

    mel_MF: np.ndarray
    log_probs_VT: np.ndarray


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
            mel_BMF = flow_mel(
                self.network, encoded, output, list(texts), self.sampling, self.guide
            )
        mel_BMF = mel_BMF.float().cpu().numpy()
        return [
            WindowOutput(mel_BMF[b, :, : n * MELS_PER_FRAME], log_probs_BTV[b, :n].T)
            for b, n in enumerate(lengths)
        ]

    def mean_mel(self, n_frames: int) -> np.ndarray:
        """The constant mean-mel predictor (a baseline): the training mel mean at every frame."""
        mean_M = self.network.mel_mean_M.float().cpu().numpy()
        return np.repeat(mean_M[:, None], 4 * n_frames, axis=1)
