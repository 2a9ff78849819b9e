"""The lip-to-speech network and its losses: shapes per preset, masking, the 4:1 mel rate, learning.

Letters in shape names: B batch, T video frames, H×W pixels, F mel frames, M mel bands,
D speaker-embedding size, V CTC vocabulary, L label positions.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from l2s.config import MELS_PER_FRAME
from l2s.models.asr import SpeechRecognizer
from l2s.models.asr import tiny as asr_tiny
from l2s.models.flow import FlowHead, flow_matching_loss, sample
from l2s.models.frontend import normalize_video
from l2s.models.lip2speech import (
    Lip2Speech,
    ModelConfig,
    base,
    count_parameters,
    large,
    tiny,
)
from l2s.models.losses import LossConfig, ctc_loss, lip2speech_loss
from l2s.models.text import (
    VOCAB,
    decode_ctc,
    encode_batch,
    encode_text,
    greedy_ids,
    normalize_text,
)

torch.set_num_threads(2)

SIZE = 88


def _inputs(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video_BTHW = normalize_video(torch.randint(0, 256, (B, T, SIZE, SIZE), generator=g))
    speaker_BD = torch.nn.functional.normalize(torch.randn(B, 256, generator=g), dim=-1)
    return video_BTHW, speaker_BD


def _tiny_model(seed: int = 0, **overrides: object) -> Lip2Speech:
    """A tiny model whose speaker path is active (FiLM starts at zero, which would hide it)."""
    torch.manual_seed(seed)
    model = Lip2Speech(dataclasses.replace(tiny(), **overrides))
    torch.nn.init.normal_(model.speaker_film.weight, std=0.2)
    return model


# ---- text -------------------------------------------------------------------------------------


def test_ctc_text_round_trip() -> None:
    text = "HELLO WORLD IT'S A TEST"
    ids = encode_text("  hello   world it's a test ")
    assert len(VOCAB) == 29 and VOCAB[0] == "<blank>"
    # A CTC-style frame sequence: each label held for two frames, a blank between repeated labels.
    frames = []
    for i, label in enumerate(ids):
        if i and ids[i - 1] == label:
            frames.append(0)
        frames += [label, label]
    logits_BTV = torch.nn.functional.one_hot(torch.tensor([[*frames, 0, 0]]), len(VOCAB)).float()
    assert decode_ctc(logits_BTV) == [text]
    assert decode_ctc(logits_BTV, torch.tensor([2])) == ["H"]
    targets_BL, target_lengths_B = encode_batch([text, "OK"])
    assert target_lengths_B.tolist() == [len(text), 2]
    assert targets_BL.shape == (2, len(text)) and targets_BL[1, 2:].eq(0).all()


def test_text_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="outside the CTC vocabulary"):
        encode_text("ROOM 101")
    assert normalize_text("Room 101, please!") == "ROOM PLEASE"


# ---- configuration and shapes -----------------------------------------------------------------


def test_config_is_validated_and_round_trips() -> None:
    with pytest.raises(ValueError, match="heads"):
        ModelConfig(encoder_dim=100, encoder_heads=3)
    with pytest.raises(ValueError, match="odd"):
        ModelConfig(conv_kernel=4)
    with pytest.raises(ValueError, match="at least 1"):
        ModelConfig(decoder_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
    cfg = large()
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert base() == ModelConfig()


@pytest.mark.parametrize(
    ("preset", "low", "high"), [(tiny, 0.5e6, 3e6), (base, 30e6, 60e6), (large, 250e6, 400e6)]
)
def test_preset_shapes_and_sizes(preset, low: float, high: float) -> None:
    B, T = 2, 5
    on_meta = preset is large
    video_BTHW, speaker_BD = _inputs(B, T)
    if on_meta:
        # Hundreds of millions of parameters: sized and traced without allocating anything.
        with torch.device("meta"):
            model = Lip2Speech(preset())
        video_BTHW, speaker_BD, lengths_B = video_BTHW.to("meta"), speaker_BD.to("meta"), None
    else:
        model = Lip2Speech(preset()).eval()
        lengths_B = torch.tensor([T, 3])
    n_params = count_parameters(model)
    print(f"{preset.__name__}: {n_params / 1e6:.2f} M parameters")
    assert low < n_params < high
    with torch.no_grad():
        out = model(video_BTHW, lengths_B, speaker_BD)
    F, M = T * MELS_PER_FRAME, model.cfg.n_mels
    assert out.mel_BMF.shape == out.mel_post_BMF.shape == (B, M, F)
    assert out.ctc_logits_BTV.shape == (B, T, len(VOCAB))
    assert out.mel_lengths_B.shape == (B,)
    if not on_meta:
        assert out.mel_lengths_B.tolist() == [F, 3 * MELS_PER_FRAME]
        assert torch.isfinite(out.mel_post_BMF).all()


@pytest.mark.parametrize("T", [1, 3, 8])
def test_exactly_four_mel_frames_per_video_frame(T: int) -> None:
    model = _tiny_model().eval()
    video_BTHW, speaker_BD = _inputs(3, T)
    lengths_B = torch.tensor([T, max(1, T - 1), 1])
    with torch.no_grad():
        out = model(video_BTHW.unsqueeze(1), lengths_B, speaker_BD)  # the B×1×T×H×W layout
    assert MELS_PER_FRAME == 4
    assert out.mel_post_BMF.shape[-1] == 4 * T
    assert out.mel_lengths_B.tolist() == (4 * lengths_B).tolist()


def test_rejects_bad_lengths_and_speakers() -> None:
    model = _tiny_model().eval()
    video_BTHW, speaker_BD = _inputs(2, 4)
    with pytest.raises(ValueError, match="lengths"):
        model(video_BTHW, torch.tensor([4, 5]), speaker_BD)
    with pytest.raises(ValueError, match="speaker"):
        model(video_BTHW, torch.tensor([4, 2]), speaker_BD[:, :128])


# ---- masking and conditioning -----------------------------------------------------------------


def test_padding_does_not_change_valid_frames() -> None:
    model = _tiny_model().eval()
    T, short = 12, 7
    video_BTHW, speaker_BD = _inputs(2, T)
    # Whatever the padding holds must not matter: fill it with loud noise.
    video_BTHW[1, short:] = 50 * torch.randn(T - short, SIZE, SIZE)
    with torch.no_grad():
        batch = model(video_BTHW, torch.tensor([T, short]), speaker_BD)
        alone = model(video_BTHW[1:, :short], torch.tensor([short]), speaker_BD[1:])
    F = short * MELS_PER_FRAME
    torch.testing.assert_close(batch.mel_BMF[1, :, :F], alone.mel_BMF[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        batch.mel_post_BMF[1, :, :F], alone.mel_post_BMF[0], atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        batch.ctc_logits_BTV[1, :short], alone.ctc_logits_BTV[0], atol=1e-4, rtol=1e-4
    )
    assert batch.mel_post_BMF[1, :, F:].eq(0).all()
    assert batch.ctc_logits_BTV[1, short:].eq(0).all()


def test_speaker_conditioning() -> None:
    model = _tiny_model().eval()
    video_BTHW, speaker_BD = _inputs(2, 4)
    lengths_B = torch.tensor([4, 4])
    with torch.no_grad():
        mel = model(video_BTHW, lengths_B, speaker_BD).mel_post_BMF
        other = model(video_BTHW, lengths_B, speaker_BD.flip(0)).mel_post_BMF
        scaled = model(video_BTHW, lengths_B, 3 * speaker_BD).mel_post_BMF
        none = model(video_BTHW, lengths_B, None).mel_post_BMF
        zeros = model(video_BTHW, lengths_B, torch.zeros_like(speaker_BD)).mel_post_BMF
    assert (mel - other).abs().max() > 1e-3
    torch.testing.assert_close(mel, scaled)  # embeddings are renormalised (speaker averages)
    torch.testing.assert_close(none, zeros)
    # speaker_dropout=1 drops every embedding in training: the "no speaker" input.
    dropping = _tiny_model(speaker_dropout=1.0, dropout=0.0).train()
    with torch.no_grad():
        dropped = dropping(video_BTHW, lengths_B, speaker_BD).mel_post_BMF
        without = dropping(video_BTHW, lengths_B, None).mel_post_BMF
    torch.testing.assert_close(dropped, without)


# ---- losses -----------------------------------------------------------------------------------


def test_losses_ignore_padding_and_missing_transcripts() -> None:
    model = _tiny_model().eval()
    T = 6
    video_BTHW, speaker_BD = _inputs(2, T)
    with torch.no_grad():
        out = model(video_BTHW, torch.tensor([T, 4]), speaker_BD)
    mel_BMF = torch.randn(2, 80, T * MELS_PER_FRAME)
    total, parts = lip2speech_loss(out, mel_BMF)
    assert set(parts) == {"mel_l1", "mel_l2", "post_l1", "post_l2"}
    noisy_BMF = mel_BMF.clone()
    noisy_BMF[1, :, 4 * MELS_PER_FRAME :] = float("nan")
    torch.testing.assert_close(lip2speech_loss(out, noisy_BMF)[0], total)

    targets_BL, target_lengths_B = encode_batch(["HI", ""])
    with_text, parts = lip2speech_loss(out, mel_BMF, targets_BL, target_lengths_B)
    alone = ctc_loss(out.ctc_logits_BTV[:1], out.lengths_B[:1], targets_BL[:1], torch.tensor([2]))
    torch.testing.assert_close(parts["ctc"], alone)
    torch.testing.assert_close(with_text, total + LossConfig().ctc_weight * alone)
    _, parts = lip2speech_loss(out, mel_BMF, *encode_batch(["", ""]))
    assert "ctc" not in parts
    with pytest.raises(ValueError, match="shape"):
        lip2speech_loss(out, mel_BMF[..., :-1])


def test_tiny_model_overfits_a_small_batch() -> None:
    """A real learning check: 50 Adam steps on 2 random clips must more than halve the loss."""
    model = _tiny_model(dropout=0.0, speaker_dropout=0.0).train()
    T = 12
    video_BTHW, speaker_BD = _inputs(2, T, seed=1)
    lengths_B = torch.tensor([T, 9])
    mel_BMF = torch.randn(2, 80, T * MELS_PER_FRAME, generator=torch.Generator().manual_seed(2))
    targets_BL, target_lengths_B = encode_batch(["BIN BLUE", "SET RED"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, start = [], time.perf_counter()
    for _ in range(50):
        out = model(video_BTHW, lengths_B, speaker_BD)
        loss, parts = lip2speech_loss(out, mel_BMF, targets_BL, target_lengths_B)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(
        f"overfit: loss {losses[0]:.3f} → {losses[-1]:.3f} in {time.perf_counter() - start:.1f} s"
    )
    assert losses[-1] < 0.5 * losses[0]
    assert parts["post_l1"] < 0.6 * 0.8  # |N(0,1)| averages 0.8: well below predicting zeros


# ---- text conditioning ------------------------------------------------------------------------


def test_text_conditioning_is_off_by_default_and_adds_only_its_own_parts() -> None:
    plain = Lip2Speech(tiny())
    texted = Lip2Speech(dataclasses.replace(tiny(), text_conditioning=True))
    assert plain.text_attention is None
    extra = set(texted.state_dict()) - set(plain.state_dict())
    assert extra and all(name.startswith("text_attention.") for name in extra)
    assert set(plain.state_dict()) <= set(texted.state_dict())


def test_the_text_changes_the_mel_and_its_padding_does_not() -> None:
    model = _tiny_model(text_conditioning=True).eval()
    T = 10
    video_BTHW, speaker_BD = _inputs(2, T)
    lengths_B = torch.tensor([T, T])
    with torch.no_grad():
        said = model(video_BTHW, lengths_B, speaker_BD, *encode_batch(["BIN BLUE", "SET RED"]))
        other = model(video_BTHW, lengths_B, speaker_BD, *encode_batch(["LAY GREEN", "SET RED"]))
        # The second clip's text padded to a longer batch: the same mel.
        longer = model(
            video_BTHW, lengths_B, speaker_BD, *encode_batch(["BIN BLUE AT F TWO", "SET RED"])
        )
        none = model(video_BTHW, lengths_B, speaker_BD, *encode_batch(["", ""]))
        read = model(video_BTHW, lengths_B, speaker_BD)  # its own greedy reading
        encoded = model.encode(video_BTHW, lengths_B, speaker_BD)
        again = model.decode(encoded, *greedy_ids(encoded.ctc_logits_BTV, lengths_B))
    assert (said.mel_post_BMF[0] - other.mel_post_BMF[0]).abs().max() > 1e-4
    torch.testing.assert_close(said.mel_post_BMF[1], other.mel_post_BMF[1])
    torch.testing.assert_close(said.mel_post_BMF[1], longer.mel_post_BMF[1], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(none.mel_post_BMF).all()
    torch.testing.assert_close(read.mel_post_BMF, again.mel_post_BMF)
    with pytest.raises(ValueError, match="text-conditioned"):
        model.decode(encoded)


def test_a_hidden_video_leaves_the_decoder_the_speaker_and_the_text() -> None:
    """Modality dropout (`TrainConfig.video_dropout`): a hidden clip's mel does not depend on its
    video, its CTC reading still does, and the other clips are untouched."""
    model = _tiny_model(text_conditioning=True).eval()
    T = 10
    video_BTHW, speaker_BD = _inputs(2, T)
    other_BTHW, _ = _inputs(2, T, seed=7)
    text = encode_batch(["BIN BLUE", "SET RED"])
    hide_B = torch.tensor([True, False])
    with torch.no_grad():
        plain = model(video_BTHW, None, speaker_BD, *text)
        hidden = model(video_BTHW, None, speaker_BD, *text, hide_video_B=hide_B)
        hidden_other = model(other_BTHW, None, speaker_BD, *text, hide_video_B=hide_B)
    torch.testing.assert_close(hidden.mel_post_BMF[0], hidden_other.mel_post_BMF[0])
    assert (hidden.mel_post_BMF[0] - plain.mel_post_BMF[0]).abs().max() > 1e-4
    torch.testing.assert_close(hidden.mel_post_BMF[1], plain.mel_post_BMF[1])
    torch.testing.assert_close(hidden.ctc_logits_BTV, plain.ctc_logits_BTV)
    assert (hidden.ctc_logits_BTV[0] - hidden_other.ctc_logits_BTV[0]).abs().max() > 1e-4


def test_a_text_conditioned_model_learns_from_its_text() -> None:
    """Two clips with the same video and different texts and targets: only the text can tell them
    apart, so fitting both needs the text path."""
    model = _tiny_model(text_conditioning=True, dropout=0.0, speaker_dropout=0.0).train()
    T = 8
    video_BTHW, speaker_BD = _inputs(1, T, seed=3)
    video_BTHW, speaker_BD = video_BTHW.expand(2, -1, -1, -1), speaker_BD.expand(2, -1)
    g = torch.Generator().manual_seed(4)
    mel_BMF = torch.randn(1, 80, T * MELS_PER_FRAME, generator=g).expand(2, -1, -1).clone()
    mel_BMF[1] = -mel_BMF[1]
    text = encode_batch(["BIN BLUE", "SET RED"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = model(video_BTHW, None, speaker_BD, *text)
        loss, parts = lip2speech_loss(out, mel_BMF)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Without the text the best is the mean of ±mel, i.e. zeros: |N(0,1)| averages 0.8.
    assert parts["post_l1"] < 0.4


# ---- speech recognizer ------------------------------------------------------------------------


@pytest.mark.parametrize("subsample", [1, 2, 4])
def test_recognizer_frames_lengths_and_padding(subsample: int) -> None:
    torch.manual_seed(0)
    model = SpeechRecognizer(dataclasses.replace(asr_tiny(), subsample=subsample)).eval()
    F, short = 41, 23
    mel_BMF = torch.randn(2, 80, F)
    mel_BMF[1, :, short:] = 100.0  # padding holds anything
    with torch.no_grad():
        logits_BTV, lengths_B = model(mel_BMF, torch.tensor([F, short]))
        alone_BTV, alone_B = model(mel_BMF[1:, :, :short], torch.tensor([short]))
    assert lengths_B.tolist() == [-(-F // subsample), -(-short // subsample)]
    assert logits_BTV.shape == (2, -(-F // subsample), len(VOCAB))
    n = int(alone_B[0])
    torch.testing.assert_close(logits_BTV[1, :n], alone_BTV[0], atol=1e-4, rtol=1e-4)
    assert logits_BTV[1, n:].eq(0).all()


def test_recognizer_learns_to_spell_two_clips() -> None:
    torch.manual_seed(0)
    model = SpeechRecognizer(asr_tiny()).train()
    mel_BMF = torch.randn(2, 80, 120, generator=torch.Generator().manual_seed(5))
    targets_BL, target_lengths_B = encode_batch(["BIN BLUE", "SET RED"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        logits_BTV, lengths_B = model(mel_BMF)
        loss = ctc_loss(logits_BTV, lengths_B, targets_BL, target_lengths_B)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert decode_ctc(*model(mel_BMF)) == ["BIN BLUE", "SET RED"]


def test_a_recognizer_loss_teaches_the_generated_mel_to_be_heard() -> None:
    """Only the frozen recognizer's CTC term (every mel weight 0): the generated mel comes to be
    read as the transcript, and the recognizer itself is not changed."""
    torch.manual_seed(0)
    recognizer = SpeechRecognizer(asr_tiny()).eval().requires_grad_(False)
    frozen = {k: v.clone() for k, v in recognizer.state_dict().items()}
    model = _tiny_model(dropout=0.0, speaker_dropout=0.0).train()
    T = 20
    video_BTHW, speaker_BD = _inputs(2, T, seed=3)
    lengths_B = torch.tensor([T, T])
    texts = ["BIN BLUE", "SET RED"]
    targets_BL, target_lengths_B = encode_batch(texts)
    only_asr = LossConfig(l1_weight=0.0, l2_weight=0.0, ctc_weight=0.0, asr_weight=1.0)
    mel_BMF = torch.zeros(2, 80, T * MELS_PER_FRAME)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        out = model(video_BTHW, lengths_B, speaker_BD)
        loss, parts = lip2speech_loss(
            out, mel_BMF, targets_BL, target_lengths_B, only_asr, recognizer
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert "asr" in parts and torch.isclose(loss, parts["asr"])
    model.eval()
    with torch.no_grad():
        out = model(video_BTHW, lengths_B, speaker_BD)
        assert decode_ctc(*recognizer(out.mel_post_BMF, out.mel_lengths_B)) == texts
    assert all(torch.equal(v, frozen[k]) for k, v in recognizer.state_dict().items())


# ---- flow-matching head -----------------------------------------------------------------------


def test_flow_head_is_off_by_default_and_trains_inside_forward() -> None:
    assert Lip2Speech(tiny()).flow is None
    model = _tiny_model(flow_head=True).train()
    T = 6
    video_BTHW, speaker_BD = _inputs(2, T)
    mel_BMF = torch.randn(2, 80, T * MELS_PER_FRAME)
    out = model(video_BTHW, torch.tensor([T, 4]), speaker_BD, mel_BMF=mel_BMF)
    assert out.flow_cond_BFC.shape == (2, T * MELS_PER_FRAME, model.cfg.decoder_dim + 80)
    total, parts = lip2speech_loss(out, mel_BMF)
    assert parts["flow"] > 0 and torch.isfinite(total)
    total.backward()
    assert model.flow.out.weight.grad.abs().sum() > 0
    without = model(video_BTHW, torch.tensor([T, 4]), speaker_BD)
    assert without.flow_loss is None and "flow" not in lip2speech_loss(without, mel_BMF)[1]


def test_flow_sampling_reaches_the_targets_it_learned() -> None:
    """Two conditions, two targets: after training, a 16-step Euler sample from noise lands near
    each condition's target, and the unconditional velocity (zeros) lands between them."""
    torch.manual_seed(0)
    head = FlowHead(8, 4, 32, layers=1, heads=2, ffn_mult=2, kernel=3, dropout=0.0)
    F = 6
    cond_BFC = torch.zeros(2, F, 4)
    cond_BFC[0, :, 0], cond_BFC[1, :, 1] = 1.0, 1.0
    z1_BFM = torch.ones(2, F, 8)
    z1_BFM[1] = -1.0
    mask_BF = torch.ones(2, F, dtype=torch.bool)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        loss = flow_matching_loss(head, z1_BFM, cond_BFC, mask_BF, uncond_prob=0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        z_BFM = sample(head, [(cond_BFC, 1.0)], None, 16, 8, torch.Generator().manual_seed(1))
        none_BFM = sample(head, [(torch.zeros_like(cond_BFC), 1.0)], None, 16, 8)
    assert (z_BFM - z1_BFM).abs().mean() < 0.3
    assert none_BFM.mean().abs() < 0.5
