"""Reading text out of CTC character log-probabilities: greedy, or a prefix beam search that only
follows texts a grammar or a lexicon allows (Hannun et al. 2014's CTC prefix beam search, with the
grammar's automaton pruning every extension).

A `Grammar` is a sequence of word slots: a sentence takes one word from each slot in turn (GRID's
command colour preposition letter digit adverb), or, with `repeat`, any number of words from one
slot (a lexicon). Words are upper-case and separated by single spaces, as CTC transcripts are
(`l2s.models.text`). The grammar a model reads with is chosen from its training transcripts
(`grammar_for`) and kept in its checkpoint.

Letters in shape names: T frames, V vocabulary size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from l2s.models.text import BLANK_ID, VOCAB, decode_ids
from l2s.synth.sentences import GRID

_SPACE = VOCAB.index(" ")
_ID = {ch: i for i, ch in enumerate(VOCAB)}
# A character this far below the frame's best is never an extension (a 1e-6 ratio): it would not
# survive the beam, and skipping it keeps the search cheap.
PRUNE_LOG_RATIO = -14.0


@dataclass(frozen=True)
class Grammar:
    """Word slots a sentence walks through; `repeat`: any number of words from the one slot."""

    name: str
    slots: tuple[tuple[str, ...], ...]
    repeat: bool = False
    _tries: tuple[dict, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.slots or any(not words for words in self.slots):
            raise ValueError(f"grammar {self.name!r}: every slot needs at least one word")
        if self.repeat and len(self.slots) != 1:
            raise ValueError(f"grammar {self.name!r}: a repeating grammar has exactly one slot")
        bad = sorted(
            {w for words in self.slots for w in words if not w or set(w) - set(VOCAB[3:]) - {"'"}}
        )
        if bad:
            raise ValueError(f"grammar {self.name!r}: words outside A-Z and ' : {bad[:10]}")
        object.__setattr__(self, "_tries", tuple(_trie(words) for words in self.slots))

    @classmethod
    def lexicon(cls, words: Iterable[str], name: str = "lexicon") -> Grammar:
        return cls(name, (tuple(sorted(set(words))),), repeat=True)

    def to_dict(self) -> dict:
        return {"name": self.name, "slots": [list(s) for s in self.slots], "repeat": self.repeat}

    @classmethod
    def from_dict(cls, values: dict) -> Grammar:
        return cls(values["name"], tuple(tuple(s) for s in values["slots"]), values["repeat"])

    def accepts(self, text: str) -> bool:
        words = text.split(" ")
        if self.repeat:
            return bool(text) and all(w in self.slots[0] for w in words)
        return len(words) == len(self.slots) and all(
            w in slot for w, slot in zip(words, self.slots, strict=True)
        )

    # The automaton: a state is (slot, trie node); a node is a dict of char id → child, with the
    # key None present where a word ends.
    def start(self) -> tuple[int, dict]:
        return 0, self._tries[0]

    def step(self, state: tuple[int, dict], char: int) -> tuple[int, dict] | None:
        slot, node = state
        if char == _SPACE:
            if None not in node:
                return None
            following = 0 if self.repeat else slot + 1
            return (following, self._tries[following]) if following < len(self.slots) else None
        child = node.get(char)
        return None if child is None else (slot, child)

    def allowed(self, state: tuple[int, dict]) -> list[int]:
        _, node = state
        chars = [c for c in node if c is not None]
        return [*chars, _SPACE] if self.step(state, _SPACE) is not None else chars

    def final(self, state: tuple[int, dict]) -> bool:
        slot, node = state
        return None in node and (self.repeat or slot == len(self.slots) - 1)


def _trie(words: Iterable[str]) -> dict:
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(_ID[ch], {})
        node[None] = True
    return root


GRID_GRAMMAR = Grammar("grid", tuple(tuple(w.upper() for w in slot) for slot in GRID))
GRAMMARS = {"grid": GRID_GRAMMAR}


def grammar_for(transcripts: Iterable[str], choice: str) -> Grammar | None:
    """The grammar a model trained on `transcripts` reads with. `choice`: "auto" (GRID's when every
    transcript is a GRID sentence, none otherwise), "grid", "lexicon" (the transcripts' words,
    any order: closed-vocabulary corpora) or "none" (greedy decoding)."""
    texts = [t for t in transcripts if t]
    if choice == "none":
        return None
    if choice == "grid":
        return GRID_GRAMMAR
    if choice == "lexicon":
        if not texts:
            raise ValueError("a lexicon needs transcripts, and no training clip has one")
        return Grammar.lexicon(w for t in texts for w in t.split())
    if choice == "auto":
        return GRID_GRAMMAR if texts and all(GRID_GRAMMAR.accepts(t) for t in texts) else None
    raise ValueError(f"unknown grammar {choice!r}: use auto, grid, lexicon or none")


def greedy(log_probs_TV: np.ndarray) -> str:
    """Best class per frame, repeats merged, blanks dropped."""
    best_T = np.asarray(log_probs_TV).argmax(axis=-1)
    keep_T = np.ones(len(best_T), bool)
    keep_T[1:] = best_T[1:] != best_T[:-1]
    return decode_ids([int(i) for i in best_T[keep_T] if i != BLANK_ID])


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _add(beams: dict, prefix: tuple[int, ...], state, p_blank: float, p_char: float) -> None:
    entry = beams.setdefault(prefix, [-math.inf, -math.inf, state])
    entry[0] = _logaddexp(entry[0], p_blank)
    entry[1] = _logaddexp(entry[1], p_char)


def beam_search(log_probs_TV: np.ndarray, grammar: Grammar, beam: int = 16) -> str:
    """The most probable text the grammar allows, summed over its CTC alignments, by a prefix beam
    search of `beam` prefixes. When no prefix in the beam completes a sentence (a clip too short
    for one), the greedy reading is returned instead."""
    log_probs_TV = np.asarray(log_probs_TV, np.float64)
    # prefix (char ids) → [log P(ends in blank), log P(ends in a char), automaton state]
    beams: dict[tuple[int, ...], list] = {(): [0.0, -math.inf, grammar.start()]}
    for logp_V in log_probs_TV:
        floor = logp_V.max() + PRUNE_LOG_RATIO
        blank = logp_V[BLANK_ID]
        nxt: dict[tuple[int, ...], list] = {}
        for prefix, (p_b, p_c, state) in beams.items():
            total = _logaddexp(p_b, p_c)
            _add(nxt, prefix, state, total + blank, -math.inf)
            if prefix:
                _add(nxt, prefix, state, -math.inf, p_c + logp_V[prefix[-1]])
            for char in grammar.allowed(state):
                if logp_V[char] < floor:
                    continue
                # A repeated character needs a blank between: only the blank-ending paths extend.
                from_paths = p_b if prefix and prefix[-1] == char else total
                extended = (*prefix, char)
                _add(nxt, extended, grammar.step(state, char), -math.inf, from_paths + logp_V[char])
        ranked = sorted(nxt.items(), key=lambda kv: _logaddexp(kv[1][0], kv[1][1]), reverse=True)
        beams = dict(ranked[:beam])
    finished = [
        (_logaddexp(p_b, p_c), prefix)
        for prefix, (p_b, p_c, state) in beams.items()
        if grammar.final(state)
    ]
    if not finished:
        return greedy(log_probs_TV)
    return decode_ids(list(max(finished)[1]))


def read_text(log_probs_TV: np.ndarray, grammar: Grammar | None, beam: int = 16) -> str:
    """The text in a clip's CTC log-probabilities: the grammar's beam search, or greedy without one."""
    return greedy(log_probs_TV) if grammar is None else beam_search(log_probs_TV, grammar, beam)
