"""A synthetic conversation: facts planted at known turns among filler questions."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PlantedFact:
    turn: int
    message: str
    needle: str  # present in a request's context iff the fact reached the model


PLANTED = [
    PlantedFact(1, "Hi! My name is Ada Lovelace.", "Ada Lovelace"),
    PlantedFact(30, "By the way, I prefer green tea over coffee.", "green tea"),
    PlantedFact(60, "My favourite city is Lisbon.", "Lisbon"),
    PlantedFact(90, "I decided to use PostgreSQL for the project database.", "PostgreSQL"),
    PlantedFact(120, "My deadline is 14 March.", "14 March"),
    PlantedFact(150, "My manager is Grace Hopper.", "Grace Hopper"),
    PlantedFact(180, "My budget is 4000 euros.", "4000 euros"),
]

_TOPICS = [
    "volcanoes",
    "the Roman roads",
    "sourdough",
    "tide tables",
    "jazz harmony",
    "glaciers",
    "compilers",
    "bird migration",
    "chess openings",
    "the printing press",
    "coral reefs",
    "orbital mechanics",
    "bridges",
    "typography",
    "honeybees",
    "desert plants",
]
_TEMPLATES = [
    "What is the most surprising thing about {}?",
    "Give a short overview of {}.",
    "How would you explain {} to a child?",
    "Which book is a good start on {}?",
    "What are common misconceptions about {}?",
]


def messages(turns: int, seed: int = 7) -> list[str]:
    """The user's messages, turn 1 first: filler questions with the facts in place."""
    rng = random.Random(seed)
    planted = {p.turn: p.message for p in PLANTED}
    return [planted.get(n) or rng.choice(_TEMPLATES).format(rng.choice(_TOPICS)) for n in range(1, turns + 1)]
