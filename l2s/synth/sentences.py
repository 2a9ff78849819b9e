"""Sentences for the synthetic corpus: the GRID grammar, or a larger open vocabulary."""

from __future__ import annotations

import numpy as np

GRID = (
    ("bin", "lay", "place", "set"),
    ("blue", "green", "red", "white"),
    ("at", "by", "in", "with"),
    tuple("abcdefghijklmnopqrstuvxyz"),  # GRID has no "w": its name is three syllables long
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    ("again", "now", "please", "soon"),
)

# Short English sentences: determiner, adjective, noun, verb, place. Words chosen to cover all
# visemes (bilabials, labiodentals, rounded and spread vowels) across many phoneme contexts.
OPEN = (
    ("the", "a", "my", "your", "our", "this", "that", "every"),
    ("big", "small", "old", "new", "red", "blue", "happy", "quiet", "brave", "funny",
     "warm", "cold", "loud", "soft", "sharp", "round", "young", "busy", "proud", "wise"),
    ("dog", "cat", "man", "woman", "child", "teacher", "farmer", "pilot", "baby", "mother",
     "father", "friend", "doctor", "bird", "horse", "fish", "queen", "boy", "girl", "judge"),
    ("walks", "waits", "sleeps", "sings", "jumps", "reads", "works", "moves", "shouts", "plays",
     "smiles", "looks", "thinks", "swims", "eats", "stays", "laughs", "calls", "runs", "speaks"),
    ("at home", "by the river", "in the park", "on the boat", "near the shop", "under the bridge",
     "with a smile", "after lunch", "before noon", "every morning", "over there", "in the rain",
     "by the fire", "on the phone", "at the zoo", "through the woods", "beyond the hill",
     "at the window", "in the garden", "above the clouds"),
)  # fmt: skip

VOCABULARIES = {"grid": GRID, "open": OPEN}


def sample_sentence(rng: np.random.Generator, vocab: str) -> str:
    slots = VOCABULARIES[vocab]
    return " ".join(slot[rng.integers(len(slot))] for slot in slots)


def grid_jsgf() -> str:
    """The GRID grammar as JSGF, for pocketsphinx's grammar search (tests and scoring)."""
    alternatives = " ".join(f"({' | '.join(words)})" for words in GRID)
    return f"#JSGF V1.0;\ngrammar grid;\npublic <sentence> = {alternatives};\n"
