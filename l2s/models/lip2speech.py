"""The lip-to-speech network: silent mouth video + a speaker embedding → log-mel (+ CTC characters).

Non-autoregressive, after Kim et al. 2023 ("Lip-to-Speech Synthesis in the Wild with Multi-task
Learning"): visual front-end (3-D conv stem + ResNet-18 trunk) → linear → Conformer encoder at the
video rate → CTC character head, and in parallel speaker conditioning (FiLM) → ×4 upsampling to the
mel rate → Conformer mel decoder → linear to mel bands → residual postnet.

No audio of the utterance being generated enters the model. Its only acoustic input is
`speaker_BD`, one L2-normalised speaker embedding per clip, and at test time the caller must take it
from somewhere other than the target utterance: another utterance of the same speaker, a reference
clip the user supplies, or the speaker's average embedding. Training may use any utterance of the
speaker; another utterance than the target one is the safer choice, since it matches test time.
Passing no embedding (or zeros) asks for the speaker-agnostic voice that `speaker_dropout` trains.

Letters in shape names: B batch, T video frames, H×W pixels, C channels, F mel frames
(F = 4·T, MELS_PER_FRAME), M mel bands, D speaker-embedding size, V CTC vocabulary size,
L characters of text.

With `text_conditioning`, the features also attend to a text before the decoder (Hegde et al.'s
idea): `forward` takes it (`text_BL`), and without one reads the clip's own CTC output greedily;
`encode` then `decode` let a caller read the lips its own way (a grammar's beam search) in between.
With `flow_head`, a flow-matching head (`l2s.models.flow`) learns to sample the mel, conditioned
on the regression decoder's features and mel (its loss is computed in `forward` when the target
mel is given, so that data-parallel wrappers see every parameter used in their forward).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from l2s.config import AUDIO, MELS_PER_FRAME
from l2s.models.conformer import ConformerEncoder
from l2s.models.decoder import Postnet, Upsampler
from l2s.models.flow import FlowHead, flow_matching_loss
from l2s.models.frontend import VisualFrontend
from l2s.models.masking import check_lengths, lengths_to_mask
from l2s.models.text import VOCAB, greedy_ids
from l2s.models.text_condition import TextConditioning


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Sizes of every part of `Lip2Speech`; the defaults are the `base` preset.

    Start from a preset (`tiny`, `base`, `large`) and change fields with `dataclasses.replace`.
    """

    frontend_width: int = 64
    frontend_blocks: tuple[int, ...] = (2, 2, 2, 2)
    stem_time_kernel: int = 5
    stem_stride: int = 2
    encoder_dim: int = 384
    encoder_layers: int = 6
    encoder_heads: int = 6
    encoder_conv_kernel: int = 31
    decoder_dim: int = 256
    decoder_layers: int = 4
    decoder_heads: int = 4
    decoder_conv_kernel: int = 31
    ffn_mult: int = 4
    upsample_convs: int = 2
    postnet_dim: int = 512
    postnet_layers: int = 5
    conv_kernel: int = 5
    n_mels: int = AUDIO.n_mels
    speaker_dim: int = 256
    speaker_dropout: float = 0.1
    dropout: float = 0.1
    # Text conditioning (`l2s.models.text_condition`), off by default: the encoder's features attend
    # to characters (lip-read at inference) before the mel decoder.
    text_conditioning: bool = False
    text_layers: int = 1
    text_attention_layers: int = 2
    # A flow-matching mel head (`l2s.models.flow`), off by default, beside the regression decoder
    # it is conditioned on; training drops its condition for `flow_uncond` of the clips.
    flow_head: bool = False
    flow_layers: int = 2
    flow_uncond: float = 0.1

    def __post_init__(self) -> None:
        positive = [k for k, v in asdict(self).items() if type(v) is int and v < 1]
        if positive:
            raise ValueError(f"these sizes must be at least 1: {positive}")
        if not self.frontend_blocks or min(self.frontend_blocks) < 1:
            raise ValueError(
                f"frontend_blocks needs ≥1 block per stage, got {self.frontend_blocks}"
            )
        for part in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{part}_dim"), getattr(self, f"{part}_heads")
            if dim % heads or (dim // heads) % 2:
                raise ValueError(f"{part}_dim {dim} must split into {heads} heads of even size")
        odd = ("stem_time_kernel", "encoder_conv_kernel", "decoder_conv_kernel", "conv_kernel")
        even = [name for name in odd if getattr(self, name) % 2 == 0]
        if even:
            raise ValueError(f"kernels must be odd to keep frames aligned: {even}")
        if self.postnet_layers < 2:
            raise ValueError(f"postnet_layers must be at least 2, got {self.postnet_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not 0.0 <= self.speaker_dropout <= 1.0:
            raise ValueError(f"speaker_dropout must lie in [0, 1], got {self.speaker_dropout}")
        if not 0.0 <= self.flow_uncond <= 1.0:
            raise ValueError(f"flow_uncond must lie in [0, 1], got {self.flow_uncond}")

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """Inverse of `to_dict`, also after a JSON round trip (lists back to tuples)."""
        return cls(**{**values, "frontend_blocks": tuple(values["frontend_blocks"])})


def tiny() -> ModelConfig:
    """About 1.1 M parameters: trains on a 2-core CPU in minutes (tests, demo).

    The ResNet trunk is 8 channels wide (not 64) and the stem strides by 4 (not 2), so frames reach
    the trunk at 11×11: the front-end dominates CPU time, and this gives 2–3 training steps a
    second at 8 clips × 50 frames on 2 threads. No dropout: a run of minutes underfits, and
    without it a 28-minute run reached test STOI 0.793 against 0.738 with dropout 0.1 (README).
    """
    return ModelConfig(
        frontend_width=8,
        stem_stride=4,
        encoder_dim=128,
        encoder_layers=2,
        encoder_heads=2,
        encoder_conv_kernel=15,
        decoder_dim=96,
        decoder_layers=1,
        decoder_heads=2,
        decoder_conv_kernel=15,
        ffn_mult=2,
        upsample_convs=1,
        postnet_dim=64,
        dropout=0.0,
    )


def base() -> ModelConfig:
    """About 44 M parameters: a full-width ResNet-18 front-end; trains on one GPU."""
    return ModelConfig()


def large() -> ModelConfig:
    """About 310 M parameters: several GPUs with DeepSpeed ZeRO."""
    return ModelConfig(
        frontend_width=128,
        encoder_dim=768,
        encoder_layers=12,
        encoder_heads=12,
        decoder_dim=768,
        decoder_layers=6,
        decoder_heads=12,
        postnet_dim=768,
    )


PRESETS = {"tiny": tiny, "base": base, "large": large}


@dataclass(frozen=True)
class Encoded:
    """The encoder's side of a forward pass: speaker-conditioned video-rate features and CTC logits."""

    x_BTC: torch.Tensor
    ctc_logits_BTV: torch.Tensor
    lengths_B: torch.Tensor
    mask_BT: torch.Tensor | None  # None: no padding


@dataclass(frozen=True)
class Lip2SpeechOutput:
    """What `Lip2Speech.forward` returns; padding steps of every tensor hold zeros."""

    mel_BMF: torch.Tensor
    mel_post_BMF: torch.Tensor
    ctc_logits_BTV: torch.Tensor
    lengths_B: torch.Tensor
    mel_lengths_B: torch.Tensor
    # With a flow head: its condition (decoder features and standardised mel, padding not
    # zeroed), and its training loss when a target mel was given.
    flow_cond_BFC: torch.Tensor | None = None
    flow_loss: torch.Tensor | None = None


class Lip2Speech(nn.Module):
    """Mouth video (normalised, 88×88) + speaker embedding → log-mel before/after postnet + CTC logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.frontend = VisualFrontend(
            width=cfg.frontend_width,
            blocks=cfg.frontend_blocks,
            stem_time_kernel=cfg.stem_time_kernel,
            stem_stride=cfg.stem_stride,
        )
        self.project = nn.Sequential(
            nn.Linear(self.frontend.out_channels, cfg.encoder_dim), nn.Dropout(cfg.dropout)
        )
        self.encoder = ConformerEncoder(
            dim=cfg.encoder_dim,
            layers=cfg.encoder_layers,
            heads=cfg.encoder_heads,
            ffn_mult=cfg.ffn_mult,
            kernel_size=cfg.encoder_conv_kernel,
            dropout=cfg.dropout,
        )
        # The text head reads the encoder before the speaker enters, so the CTC task shapes
        # features of what is said, not of whose voice it is.
        self.ctc_head = nn.Linear(cfg.encoder_dim, cfg.vocab_size)
        # FiLM: speaker → per-channel scale and shift. Zero-initialised so training starts from a
        # speaker-agnostic model and the same weights mean "no speaker" for a zero embedding.
        self.speaker_film = nn.Linear(cfg.speaker_dim, 2 * cfg.encoder_dim)
        nn.init.zeros_(self.speaker_film.weight)
        nn.init.zeros_(self.speaker_film.bias)
        self.upsample = Upsampler(
            cfg.encoder_dim,
            cfg.decoder_dim,
            MELS_PER_FRAME,
            convs=cfg.upsample_convs,
            kernel_size=cfg.conv_kernel,
            dropout=cfg.dropout,
        )
        self.decoder = ConformerEncoder(
            dim=cfg.decoder_dim,
            layers=cfg.decoder_layers,
            heads=cfg.decoder_heads,
            ffn_mult=cfg.ffn_mult,
            kernel_size=cfg.decoder_conv_kernel,
            dropout=cfg.dropout,
        )
        self.mel_out = nn.Linear(cfg.decoder_dim, cfg.n_mels)
        self.text_attention = (
            TextConditioning(
                cfg.vocab_size,
                cfg.encoder_dim,
                text_layers=cfg.text_layers,
                attention_layers=cfg.text_attention_layers,
                heads=cfg.encoder_heads,
                ffn_mult=cfg.ffn_mult,
                kernel=cfg.encoder_conv_kernel,
                dropout=cfg.dropout,
            )
            if cfg.text_conditioning
            else None
        )
        self.flow = (
            FlowHead(
                cfg.n_mels,
                cfg.decoder_dim + cfg.n_mels,
                cfg.decoder_dim,
                layers=cfg.flow_layers,
                heads=cfg.decoder_heads,
                ffn_mult=cfg.ffn_mult,
                kernel=cfg.decoder_conv_kernel,
                dropout=cfg.dropout,
            )
            if cfg.flow_head
            else None
        )
        self.postnet = Postnet(
            cfg.n_mels,
            cfg.postnet_dim,
            layers=cfg.postnet_layers,
            kernel_size=cfg.conv_kernel,
            dropout=cfg.dropout,
        )
        # The network works on per-band standardised log-mels; these buffers (set from the
        # training data by `set_mel_stats`, saved with the weights) map its output back to the
        # mel contract. Without them training spends its first hundreds of steps on finding the
        # mean level of log-mels that sit around -6, far from a fresh layer's zero output.
        self.register_buffer("mel_mean_M", torch.zeros(cfg.n_mels))
        self.register_buffer("mel_std_M", torch.ones(cfg.n_mels))

    @torch.no_grad()
    def set_mel_stats(self, mean_M: torch.Tensor, std_M: torch.Tensor) -> None:
        """Per-band mean and standard deviation of the training log-mels."""
        self.mel_mean_M.copy_(torch.as_tensor(mean_M, dtype=self.mel_mean_M.dtype))
        self.mel_std_M.copy_(torch.as_tensor(std_M, dtype=self.mel_std_M.dtype).clamp_min(1e-3))

    def forward(
        self,
        video_BTHW: torch.Tensor,
        lengths_B: torch.Tensor | None = None,
        speaker_BD: torch.Tensor | None = None,
        text_BL: torch.Tensor | None = None,
        text_lengths_B: torch.Tensor | None = None,
        mel_BMF: torch.Tensor | None = None,
        hide_video_B: torch.Tensor | None = None,
    ) -> Lip2SpeechOutput:
        """Generate mels for a padded batch of clips.

        video_BTHW: normalised grayscale mouth crops (`frontend.normalize_video`), B×T×H×W or
        B×1×T×H×W. lengths_B: valid frames per clip (None: all T). speaker_BD: speaker embeddings
        that do not come from the target audio (see the module docstring); None means no speaker.
        text_BL, text_lengths_B: character ids (blank-padded) and counts, for a text-conditioned
        model (a count of 0: no text); None: the clip's own greedy CTC reading. mel_BMF: the
        target log-mel, for the flow head's training loss. hide_video_B: see `encode`.
        """
        encoded = self.encode(video_BTHW, lengths_B, speaker_BD, hide_video_B)
        if self.text_attention is not None and text_BL is None:
            text_BL, text_lengths_B = greedy_ids(encoded.ctc_logits_BTV, encoded.lengths_B)
        return self.decode(encoded, text_BL, text_lengths_B, mel_BMF)

    def encode(
        self,
        video_BTHW: torch.Tensor,
        lengths_B: torch.Tensor | None = None,
        speaker_BD: torch.Tensor | None = None,
        hide_video_B: torch.Tensor | None = None,
    ) -> Encoded:
        """The visual encoder, the CTC head and the speaker's FiLM (arguments as `forward`).
        hide_video_B (bool, training only): these clips' features are zeroed after the CTC head
        and before the speaker enters, so their decoder hears the speaker and the text alone
        (modality dropout, `TrainConfig.video_dropout`)."""
        B, T = video_BTHW.shape[0], video_BTHW.shape[-3]
        if lengths_B is None:
            mask_BT = None
            lengths_B = torch.full((B,), T, dtype=torch.long, device=video_BTHW.device)
        else:
            check_lengths(lengths_B, B, T)
            mask_BT = lengths_to_mask(lengths_B, T)

        x_BTC = self.project(self.frontend(video_BTHW, mask_BT))
        x_BTC = self.encoder(x_BTC, mask_BT)
        ctc_logits_BTV = self.ctc_head(x_BTC)
        if mask_BT is not None:
            ctc_logits_BTV = ctc_logits_BTV.masked_fill(~mask_BT[..., None], 0.0)
        if hide_video_B is not None:
            x_BTC = x_BTC.masked_fill(hide_video_B[:, None, None], 0.0)

        scale_BC, shift_BC = self.speaker_film(self._speaker(speaker_BD, x_BTC)).chunk(2, dim=-1)
        x_BTC = x_BTC * (1.0 + scale_BC[:, None, :]) + shift_BC[:, None, :]
        return Encoded(x_BTC, ctc_logits_BTV, lengths_B, mask_BT)

    def decode(
        self,
        encoded: Encoded,
        text_BL: torch.Tensor | None = None,
        text_lengths_B: torch.Tensor | None = None,
        mel_BMF: torch.Tensor | None = None,
    ) -> Lip2SpeechOutput:
        """Encoded clips (+ text, for a text-conditioned model: required here) → mels (+ the
        flow head's condition, and its loss against a target `mel_BMF`)."""
        x_BTC, mask_BT, lengths_B = encoded.x_BTC, encoded.mask_BT, encoded.lengths_B
        if self.text_attention is not None:
            if text_BL is None or text_lengths_B is None:
                raise ValueError(
                    "this model is text-conditioned: decode needs text_BL and its lengths"
                )
            x_BTC = self.text_attention(x_BTC, lengths_B, text_BL, text_lengths_B)
        mel_lengths_B = lengths_B * MELS_PER_FRAME
        mask_BF = None if mask_BT is None else mask_BT.repeat_interleave(MELS_PER_FRAME, dim=1)

        y_BFC = self.decoder(self.upsample(x_BTC, mask_BF), mask_BF)
        z_BFM = self.mel_out(y_BFC)
        z_post_BFM = z_BFM + self.postnet(z_BFM, mask_BF)
        mean_M, std_M = self.mel_mean_M.to(z_BFM.dtype), self.mel_std_M.to(z_BFM.dtype)
        mel_BFM, mel_post_BFM = z_BFM * std_M + mean_M, z_post_BFM * std_M + mean_M
        if mask_BF is not None:
            mel_BFM = mel_BFM.masked_fill(~mask_BF[..., None], 0.0)
            mel_post_BFM = mel_post_BFM.masked_fill(~mask_BF[..., None], 0.0)
        flow_cond_BFC = flow_loss = None
        if self.flow is not None:
            flow_cond_BFC = torch.cat([y_BFC, z_post_BFM], dim=-1)
            if mel_BMF is not None:
                z1_BFM = (mel_BMF.transpose(1, 2).to(z_BFM.dtype) - mean_M) / std_M
                valid_BF = (
                    mask_BF
                    if mask_BF is not None
                    else torch.ones_like(z1_BFM[..., 0], dtype=torch.bool)
                )
                z1_BFM = z1_BFM.masked_fill(~valid_BF[..., None], 0.0)
                flow_loss = flow_matching_loss(
                    self.flow,
                    z1_BFM,
                    flow_cond_BFC,
                    valid_BF,
                    self.cfg.flow_uncond if self.training else 0.0,
                )
        return Lip2SpeechOutput(
            mel_BMF=mel_BFM.transpose(1, 2),
            mel_post_BMF=mel_post_BFM.transpose(1, 2),
            ctc_logits_BTV=encoded.ctc_logits_BTV,
            lengths_B=lengths_B,
            mel_lengths_B=mel_lengths_B,
            flow_cond_BFC=flow_cond_BFC,
            flow_loss=flow_loss,
        )

    def standardized_to_mel(self, z_BFM: torch.Tensor) -> torch.Tensor:
        """The flow's standardised mel (B×F×M) → log-mel B×M×F."""
        mean_M, std_M = self.mel_mean_M.to(z_BFM.dtype), self.mel_std_M.to(z_BFM.dtype)
        return (z_BFM * std_M + mean_M).transpose(1, 2)

    def _speaker(self, speaker_BD: torch.Tensor | None, like_BTC: torch.Tensor) -> torch.Tensor:
        B, D = like_BTC.shape[0], self.cfg.speaker_dim
        if speaker_BD is None:
            return like_BTC.new_zeros(B, D)
        if speaker_BD.shape != (B, D):
            raise ValueError(f"speaker embeddings must be {B}×{D}, got {tuple(speaker_BD.shape)}")
        # Renormalised here because a speaker average of unit vectors is shorter than one;
        # a zero vector stays zero (F.normalize's eps), which is the "no speaker" input.
        speaker_BD = F.normalize(speaker_BD.to(like_BTC.dtype), dim=-1)
        if self.training and self.cfg.speaker_dropout > 0:
            keep_B = torch.rand(B, device=speaker_BD.device) >= self.cfg.speaker_dropout
            speaker_BD = speaker_BD * keep_B[:, None].to(speaker_BD.dtype)
        return speaker_BD


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on the meta device, so large models can be sized unallocated)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
