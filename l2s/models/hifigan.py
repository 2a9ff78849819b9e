"""HiFi-GAN (Kong et al. 2020): the generator (log-mel → waveform), the multi-period and multi-scale
discriminators, and their losses, for THE mel of `l2s.audio` (16 kHz, hop 160).

The generator upsamples by exactly the hop length (the product of `upsample_rates` is 160), so F mel
frames give F·160 samples: mel frame k covers samples [160·k, 160·(k+1)), as `log_mel` frames them.
The mel-spectrogram loss calls `l2s.audio.log_mel` itself: there is no second mel function.

One addition to the paper: a silence gate (`silence_gate`, on in every preset) multiplies the
output by zero where the input mel is at its floor in every band, i.e. where the mel itself says
the recording was digitally silent; on recordings with room noise it never closes.

Presets are plain functions: `tiny` (a few hundred thousand parameters, narrow discriminators:
trains on a 2-core CPU in minutes), `v1` (the paper's V1 sizes, for GPUs), `v3` (the paper's fast
V3 generator). Weight norm is a parametrization (`torch.nn.utils.parametrizations.weight_norm`);
`Generator.remove_weight_norm` folds it into plain weights for inference.

Letters in shape names: B batch, C channels, M mel bands, F mel frames, S samples, P period.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from l2s.audio import log_mel
from l2s.config import AUDIO

LRELU_SLOPE = 0.1
# The silence gate opens between these heights of a frame's loudest mel band above the log floor.
GATE_CLOSED, GATE_OPEN = 1.0, 3.0


@dataclass(frozen=True, kw_only=True)
class HiFiGANConfig:
    """Generator and discriminator sizes; saved with every vocoder checkpoint."""

    n_mels: int = AUDIO.n_mels
    upsample_rates: tuple[int, ...] = (5, 4, 4, 2)
    upsample_kernel_sizes: tuple[int, ...] = (10, 8, 8, 4)
    upsample_initial_channel: int = 512
    resblock: str = "1"  # "1": two convolutions per dilation (V1, V2); "2": one (V3)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)  # multi-period discriminator
    scales: int = 3  # multi-scale discriminator: raw, ×2 and ×4 average-pooled
    discriminator_width: float = 1.0  # channel multiplier of both discriminators (1: the paper)
    silence_gate: bool = True  # zero the output where the mel is at its floor (`silence_gate`)

    def __post_init__(self) -> None:
        hop = 1
        for rate in self.upsample_rates:
            hop *= rate
        if hop != AUDIO.hop_length:
            raise ValueError(
                f"upsample_rates {self.upsample_rates} multiply to {hop}, not the hop length "
                f"{AUDIO.hop_length}: F mel frames must give exactly F·hop samples"
            )
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ValueError("one upsample kernel size per upsample rate")
        if any(k < u for k, u in zip(self.upsample_kernel_sizes, self.upsample_rates, strict=True)):
            raise ValueError("each upsample kernel must be at least as long as its stride")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must halve cleanly at every stage")
        if self.resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {self.resblock!r}")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("one dilation tuple per resblock kernel size")
        if self.n_mels != AUDIO.n_mels:
            raise ValueError(f"n_mels {self.n_mels} != {AUDIO.n_mels} (the mel contract)")
        if not self.discriminator_width > 0 or not self.periods or self.scales < 1:
            raise ValueError("need discriminator_width > 0, some periods and at least one scale")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> HiFiGANConfig:
        """Inverse of `to_dict`, also after a JSON round trip (lists back to tuples)."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown HiFiGANConfig fields: {unknown}")

        def tuples(value):
            return tuple(tuples(v) for v in value) if isinstance(value, list | tuple) else value

        return cls(**{k: tuples(v) for k, v in values.items()})


def tiny() -> HiFiGANConfig:
    """V3's generator at half width (128 channels, one convolution per dilation) and both
    discriminators at an eighth of their width: the GAN step is dominated by the discriminators,
    whose full-width 1024-channel layers cost ~30 GFLOP per second of audio, too much for 2 cores."""
    return HiFiGANConfig(
        upsample_initial_channel=128,
        resblock="2",
        resblock_kernel_sizes=(3, 5, 7),
        resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
        discriminator_width=0.125,
    )


def v1() -> HiFiGANConfig:
    """The paper's V1 (about 14 M generator parameters), rates (5, 4, 4, 2) for hop 160: GPUs."""
    return HiFiGANConfig()


def v3() -> HiFiGANConfig:
    """The paper's V3: a fast 256-channel generator with full-width discriminators."""
    return HiFiGANConfig(
        upsample_initial_channel=256,
        resblock="2",
        resblock_kernel_sizes=(3, 5, 7),
        resblock_dilation_sizes=((1, 2), (2, 6), (3, 12)),
    )


PRESETS = {"tiny": tiny, "v1": v1, "v3": v3}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _init_conv(module: nn.Module) -> None:
    # The paper's initialisation: N(0, 0.01) for every generator convolution.
    if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
        module.weight.data.normal_(0.0, 0.01)


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Multi-receptive-field residual block: per dilation, leaky ReLU → dilated conv (→ leaky ReLU
    → conv, for type "1"), added back to the input."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], kind: str) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel, 1, _padding(kernel, d), dilation=d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_norm(nn.Conv1d(channels, channels, kernel, 1, _padding(kernel)))
            for _ in dilations
            if kind == "1"
        )
        self.apply(_init_conv)

    def forward(self, x_BCS: torch.Tensor) -> torch.Tensor:
        for i, conv1 in enumerate(self.convs1):
            h_BCS = conv1(F.leaky_relu(x_BCS, LRELU_SLOPE))
            if self.convs2:
                h_BCS = self.convs2[i](F.leaky_relu(h_BCS, LRELU_SLOPE))
            x_BCS = x_BCS + h_BCS
        return x_BCS


class Generator(nn.Module):
    """log-mel mel_BMF → waveform wav_BS in [-1, 1] with S = F · 160."""

    def __init__(self, cfg: HiFiGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.n_mels, channels, 7, 1, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True):
            # Output length (L - 1)·rate - 2·pad + kernel + extra = L·rate exactly, odd rates too.
            pad = (kernel - rate + 1) // 2
            extra = 2 * pad - (kernel - rate)
            self.ups.append(
                weight_norm(
                    nn.ConvTranspose1d(
                        channels, channels // 2, kernel, rate, padding=pad, output_padding=extra
                    )
                )
            )
            channels //= 2
            self.resblocks.append(
                nn.ModuleList(
                    ResBlock(channels, k, d, cfg.resblock)
                    for k, d in zip(
                        cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True
                    )
                )
            )
        self.conv_post = weight_norm(nn.Conv1d(channels, 1, 7, 1, padding=3))
        self.ups.apply(_init_conv)
        self.conv_post.apply(_init_conv)

    def forward(self, mel_BMF: torch.Tensor) -> torch.Tensor:
        x_BCS = self.conv_pre(mel_BMF)
        for up, blocks in zip(self.ups, self.resblocks, strict=True):
            x_BCS = up(F.leaky_relu(x_BCS, LRELU_SLOPE))
            x_BCS = sum(block(x_BCS) for block in blocks) / len(blocks)
        # The paper's final activation uses torch's default slope (0.01), not LRELU_SLOPE.
        x_BCS = self.conv_post(F.leaky_relu(x_BCS))
        wav_BS = torch.tanh(x_BCS).squeeze(1)
        return wav_BS * silence_gate(mel_BMF) if self.cfg.silence_gate else wav_BS

    def remove_weight_norm(self) -> Generator:
        """Fold every weight-norm parametrization into a plain weight (inference); returns self."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return self


def silence_gate(mel_BMF: torch.Tensor) -> torch.Tensor:
    """Per sample, 0 where the mel says there is no sound and 1 where it says there is: gate_BS.

    A frame whose every band sits at the log floor (`AudioConfig.log_floor`) had a magnitude
    spectrum below 1e-5: digital silence, as between a synthetic corpus's sentences (a quarter to a
    third of its frames). A convolutional generator emits a faint hiss there that PESQ punishes and
    the mel loss dwells on; the mel itself already says the answer, so the output is multiplied by
    a gate that opens as the frame's loudest band rises 1 to 3 nats above the floor, interpolated
    linearly between frame centres (no clicks). Real recordings (room noise) never reach the floor,
    so there the gate stays open and changes nothing.
    """
    floor = math.log(AUDIO.log_floor)
    level_BF = mel_BMF.amax(dim=1) - floor
    gate_BF = ((level_BF - GATE_CLOSED) / (GATE_OPEN - GATE_CLOSED)).clamp(0.0, 1.0)
    # Sample s lies at frame coordinate (s + ½) / hop - ½: frame k's centre is sample hop·k + hop/2.
    return F.interpolate(
        gate_BF.unsqueeze(1), scale_factor=AUDIO.hop_length, mode="linear", align_corners=False
    ).squeeze(1)


def _width(channels: int, width: float, groups: int = 1) -> int:
    """`channels` scaled by `width`, at least `groups` and a multiple of it."""
    return max(groups, round(channels * width / groups) * groups)


def _stack(
    convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A discriminator's convolutions (leaky ReLU after each) and its output layer: the flattened
    score map and every layer's activations (for feature matching)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        features.append(x)
    x = conv_post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Samples folded into a (S / P) × P grid, 2-D convolutions along time only: judges structure
    that repeats every P samples (periodic speech)."""

    def __init__(self, period: int, width: float) -> None:
        super().__init__()
        self.period = period
        sizes = [1, *(_width(c, width) for c in (32, 128, 512, 1024))]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), (3, 1), padding=(2, 0)))
            for c_in, c_out in itertools.pairwise(sizes)
        )
        self.convs.append(weight_norm(nn.Conv2d(sizes[-1], sizes[-1], (5, 1), 1, padding=(2, 0))))
        self.conv_post = weight_norm(nn.Conv2d(sizes[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wav_BS: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        n_samples = wav_BS.shape[-1]
        if n_samples % self.period:
            wav_BS = F.pad(wav_BS, (0, self.period - n_samples % self.period), mode="reflect")
        return _stack(self.convs, self.conv_post, wav_BS.view(wav_BS.shape[0], 1, -1, self.period))


class ScaleDiscriminator(nn.Module):
    """Grouped 1-D convolutions over the waveform at one scale (MelGAN's discriminator)."""

    def __init__(self, width: float, spectral: bool) -> None:
        super().__init__()
        norm = spectral_norm if spectral else weight_norm
        # (in, out, kernel, stride, groups) of the paper's layers, before width scaling.
        layers = [
            (1, 128, 15, 1, 1),
            (128, 128, 41, 2, 4),
            (128, 256, 41, 2, 16),
            (256, 512, 41, 4, 16),
            (512, 1024, 41, 4, 16),
            (1024, 1024, 41, 1, 16),
            (1024, 1024, 5, 1, 1),
        ]
        self.convs = nn.ModuleList()
        for c_in, c_out, kernel, stride, groups in layers:
            c_in = 1 if c_in == 1 else _width(c_in, width, 16)
            c_out = _width(c_out, width, 16)
            self.convs.append(
                norm(nn.Conv1d(c_in, c_out, kernel, stride, groups=groups, padding=kernel // 2))
            )
        self.conv_post = norm(nn.Conv1d(_width(1024, width, 16), 1, 3, 1, padding=1))

    def forward(self, wav_BS: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _stack(self.convs, self.conv_post, wav_BS.unsqueeze(1))


class Discriminators(nn.Module):
    """The multi-period and multi-scale discriminators as one module: one optimizer, one DDP
    wrapper. Returns every sub-discriminator's score map and feature maps."""

    def __init__(self, cfg: HiFiGANConfig) -> None:
        super().__init__()
        width = cfg.discriminator_width
        self.periods = nn.ModuleList(PeriodDiscriminator(p, width) for p in cfg.periods)
        # The raw-scale discriminator uses spectral norm, the pooled ones weight norm (the paper).
        self.scales = nn.ModuleList(ScaleDiscriminator(width, i == 0) for i in range(cfg.scales))
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wav_BS: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        scores, features = [], []
        for disc in self.periods:
            score, feats = disc(wav_BS)
            scores.append(score)
            features.append(feats)
        for i, disc in enumerate(self.scales):
            if i:
                wav_BS = self.pool(wav_BS.unsqueeze(1)).squeeze(1)
            score, feats = disc(wav_BS)
            scores.append(score)
            features.append(feats)
        return scores, features


# ---- losses: pure functions returning (total, parts) ----------------------------------------------

Scores = list[torch.Tensor]
Features = list[list[torch.Tensor]]


def discriminator_loss(real: Scores, fake: Scores) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LSGAN: real scores towards 1, generated ones towards 0, summed over sub-discriminators."""
    real_loss = sum(torch.mean((1 - r) ** 2) for r in real)
    fake_loss = sum(torch.mean(g**2) for g in fake)
    return real_loss + fake_loss, {"d_real": real_loss.detach(), "d_fake": fake_loss.detach()}


def mel_l1(fake_BS: torch.Tensor, real_BS: torch.Tensor) -> torch.Tensor:
    """L1 between THE log-mels of the generated and the real waveform."""
    return F.l1_loss(log_mel(fake_BS), log_mel(real_BS))


# Parallel WaveGAN's three resolutions scaled to 16 kHz: (n_fft, hop, window).
STFT_RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))


def stft_loss(fake_BS: torch.Tensor, real_BS: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss (Yamamoto et al. 2020): spectral convergence + log-magnitude L1,
    averaged over resolutions. Finer in frequency than the 80-band mel, so it shapes harmonics."""
    total = fake_BS.new_zeros(())
    for n_fft, hop, win in STFT_RESOLUTIONS:
        window = torch.hann_window(win, device=fake_BS.device)
        mags = [
            torch.stft(w, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
            for w in (fake_BS, real_BS)
        ]
        convergence = torch.linalg.norm(mags[1] - mags[0]) / torch.linalg.norm(mags[1])
        total = total + convergence + F.l1_loss(mags[0].log(), mags[1].log())
    return total / len(STFT_RESOLUTIONS)


def generator_loss(
    fake_BS: torch.Tensor,
    real_BS: torch.Tensor,
    discriminated: tuple[Scores, Features, Features] | None,
    mel_weight: float = 45.0,
    stft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HiFi-GAN's generator loss: LSGAN (generated scores towards 1) + 2 × feature matching +
    `mel_weight` × mel L1, plus `stft_weight` × multi-resolution STFT loss.

    `discriminated` is (fake scores, real feature maps, fake feature maps); None leaves the
    adversarial terms out (the generator-only warm-up).
    """
    mel = mel_l1(fake_BS, real_BS)
    parts = {"mel_l1": mel.detach()}
    total = mel_weight * mel
    if stft_weight:
        stft = stft_loss(fake_BS, real_BS)
        parts["stft"] = stft.detach()
        total = total + stft_weight * stft
    if discriminated is not None:
        fake_scores, real_features, fake_features = discriminated
        adversarial = sum(torch.mean((1 - g) ** 2) for g in fake_scores)
        matching = 2 * sum(
            F.l1_loss(g, r.detach())
            for real_maps, fake_maps in zip(real_features, fake_features, strict=True)
            for r, g in zip(real_maps, fake_maps, strict=True)
        )
        parts.update(adversarial=adversarial.detach(), feature_matching=matching.detach())
        total = total + adversarial + matching
    return total, parts
