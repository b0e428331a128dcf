"""How counts are worded in messages and in the report: "1 frame", "2 frames", one rule everywhere."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def plural(count: int, noun: str) -> str:
    """`noun` as it follows `count`: the callers' nouns all take a plain "s", and each writes the number its own way
    (the report groups thousands, the command's lines do not)."""
    return noun if count == 1 else f"{noun}s"


def tally(names: Iterable[str]) -> str:
    """"2 for masks.max_detected, 1 for masks.max_given": how many of each name, in order of name (with a colon,
    "masks.max_given: 1" read as the setting's value)."""
    return ", ".join(f"{count:,} for {name}" for name, count in sorted(Counter(names).items()))
