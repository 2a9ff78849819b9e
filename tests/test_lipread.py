"""Reading text from CTC output: the grammar's beam search against greedy decoding, the grammar a
model reads with, and the lip-reader-like errors text-conditioned training injects.

Letters in shape names: B batch, T frames, V vocabulary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2s.models.grammar import GRID_GRAMMAR, Grammar, beam_search, grammar_for, greedy, read_text
from l2s.models.text import VOCAB, decode_ctc, encode_text, greedy_ids
from l2s.train.text_noise import noisy_text

SENTENCE = "BIN BLUE AT F TWO NOW"


def _log_probs(text: str, misread: dict[int, tuple[str, str]] | None = None) -> np.ndarray:
    """T×V log-probabilities of a CTC output that spells `text` (blanks between characters);
    `misread`: character position → (what the frame favours, the runner-up, a little below)."""
    misread = misread or {}
    rng = np.random.default_rng(0)
    ids = encode_text(text)
    T = 3 * len(ids) + 4
    logits_TV = rng.normal(0, 0.5, (T, len(VOCAB)))
    logits_TV[:, 0] += 4.0
    for n, label in enumerate(ids):
        frame = 2 + 3 * n
        logits_TV[frame, label] += 9.0
        if n in misread:
            wrong, right = misread[n]
            logits_TV[frame] = 0.0
            logits_TV[frame, encode_text(wrong)[0]] = 7.0
            logits_TV[frame, encode_text(right)[0]] = 6.0
    return logits_TV - np.logaddexp.reduce(logits_TV, axis=1, keepdims=True)


def test_the_grammar_corrects_what_greedy_misreads() -> None:
    # The letter F read as S, and the first letter of TWO as D: greedy says "S" and "DWO".
    log_probs_TV = _log_probs(SENTENCE, {12: ("S", "F"), 14: ("D", "T")})
    assert greedy(log_probs_TV) == "BIN BLUE AT S DWO NOW"
    read = beam_search(log_probs_TV, GRID_GRAMMAR)
    assert GRID_GRAMMAR.accepts(read)
    # S is a GRID letter too, so it stays; DWO is no digit, so the grammar finds TWO.
    assert read == "BIN BLUE AT S TWO NOW"
    assert read_text(log_probs_TV, None) == greedy(log_probs_TV)


def test_a_lexicon_reads_only_its_words_in_any_order() -> None:
    lexicon = Grammar.lexicon(["RED", "BED", "BLUE", "AT"])
    log_probs_TV = _log_probs("BLUE AT RED", {8: ("T", "R")})
    assert greedy(log_probs_TV) == "BLUE AT TED"
    assert beam_search(log_probs_TV, lexicon) == "BLUE AT RED"
    assert lexicon.accepts("RED RED BLUE") and not lexicon.accepts("RED GREEN")


def test_no_sentence_in_reach_falls_back_to_greedy() -> None:
    blank_TV = np.full((20, len(VOCAB)), -20.0)
    blank_TV[:, 0] = 0.0
    assert beam_search(blank_TV, GRID_GRAMMAR) == "" == greedy(blank_TV)


def test_which_grammar_a_corpus_gets() -> None:
    grid = ["BIN BLUE AT F TWO NOW", "SET RED WITH Z NINE SOON"]
    assert grammar_for(grid, "auto") is GRID_GRAMMAR
    assert grammar_for([*grid, "THE DOG WALKS"], "auto") is None
    assert grammar_for(grid, "none") is None
    lexicon = grammar_for(["THE DOG WALKS", "A DOG"], "lexicon")
    assert lexicon.repeat and set(lexicon.slots[0]) == {"THE", "DOG", "WALKS", "A"}
    assert Grammar.from_dict(lexicon.to_dict()) == lexicon
    assert Grammar.from_dict(GRID_GRAMMAR.to_dict()) == GRID_GRAMMAR
    with pytest.raises(ValueError, match="unknown grammar"):
        grammar_for(grid, "english")
    with pytest.raises(ValueError, match="needs transcripts"):
        grammar_for(["", ""], "lexicon")
    with pytest.raises(ValueError, match="outside"):
        Grammar("bad", (("HELLO", "W0RLD"),))


def test_greedy_ids_on_the_device_match_greedy_text() -> None:
    g = torch.Generator().manual_seed(0)
    logits_BTV = torch.randn(3, 30, len(VOCAB), generator=g)
    logits_BTV[..., 0] += 1.0
    lengths_B = torch.tensor([30, 17, 1])
    ids_BL, text_lengths_B = greedy_ids(logits_BTV, lengths_B)
    texts = decode_ctc(logits_BTV, lengths_B)
    for b, text in enumerate(texts):
        n = int(text_lengths_B[b])
        assert "".join(VOCAB[i] for i in ids_BL[b, :n].tolist()) == text
        assert ids_BL[b, n:].eq(0).all()


def test_training_text_is_misread_like_a_lip_reader() -> None:
    rng = np.random.default_rng(0)
    assert noisy_text(SENTENCE, 0.0, 0.0, GRID_GRAMMAR, rng) == SENTENCE
    assert noisy_text(SENTENCE, 0.0, 1.0, GRID_GRAMMAR, rng) == ""
    # Under a grammar every misread word is another word of its slot: the text stays a sentence.
    for _ in range(20):
        misread = noisy_text(SENTENCE, 1.0, 0.0, GRID_GRAMMAR, rng)
        assert GRID_GRAMMAR.accepts(misread)
        assert all(a != b for a, b in zip(misread.split(), SENTENCE.split(), strict=True))
    # Without one, characters are edited; about `rate` of the words change.
    words = " ".join(["HELLO"] * 400)
    changed = sum(w != "HELLO" for w in noisy_text(words, 0.3, 0.0, None, rng).split())
    assert 0.2 * 400 < changed < 0.4 * 400
