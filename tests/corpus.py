"""Generated TinyStories-like text for tests: no data files from outside the repository."""

from __future__ import annotations

import random

_NAMES = ["Lily", "Tom", "Mia", "Ben", "Sue", "Max"]
_THINGS = ["a red ball", "a big tree", "a small dog", "a shiny stone", "a blue kite", "a warm cake"]
_FEELINGS = ["happy", "sad", "brave", "tired", "curious", "kind"]


def make_corpus(n_stories: int = 200, seed: int = 0) -> str:
    """TinyStories-like text, stories separated by <|endoftext|> lines."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n_stories):
        a, b = rng.sample(_NAMES, 2)
        thing, feeling = rng.choice(_THINGS), rng.choice(_FEELINGS)
        stories.append(
            f"Once upon a time, {a} found {thing}. {a} was {feeling}. "
            f"{a} showed {thing} to {b}. {b} said, \"Wow!\" They played all day. The end."
        )
    return "\n<|endoftext|>\n".join(stories) + "\n"
