"""Generated corpora for the tiny recipe (nothing can be downloaded here).

- General text: templated English-like paragraphs about people, objects, numbers and
  places. Document ``i`` depends only on (seed, i), so any slice is reproducible.
  Sentences that state arithmetic state it correctly, so the text never teaches wrong
  facts to the model it pretrains.
- Reasoning text: task prompts followed by the procedural teacher's traces, rendered as
  a chat turn (the format every later stage prompts with), the
  "reasoning data" that FLR pretraining front-loads, and the SFT/synthesis seed set.
  With ``data.inline_thoughts`` a fraction of the records is written instead as a plain
  statement ``{question}\n{answer}``, some of them with the teacher's thought inline before
  the answer in RLP's thought template (``{question}\n<think>{thought}</think>{answer}``):
  what teaches a pretrained model that a thought may precede a continuation and help
  predict it, the format RLP scores its thoughts in.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

from slingshot.data.config import InlineThoughts, ThoughtTemplate
from slingshot.data.tasks import derive_seed
from slingshot.data.teacher import ProceduralTeacher
from slingshot.data.tokenizer import render_turn

NAMES = [
    "Ana",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kira",
    "Leo",
    "Maya",
    "Nils",
    "Olga",
    "Pablo",
    "Rosa",
    "Sam",
    "Tara",
    "Omar",
]
OBJECTS = [
    ("apple", "apples"),
    ("book", "books"),
    ("pencil", "pencils"),
    ("cup", "cups"),
    ("box", "boxes"),
    ("stone", "stones"),
    ("letter", "letters"),
    ("coin", "coins"),
    ("shell", "shells"),
    ("key", "keys"),
    ("plate", "plates"),
    ("flower", "flowers"),
    ("ticket", "tickets"),
    ("bottle", "bottles"),
]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "brown"]
PLACES = [
    "market",
    "library",
    "garden",
    "station",
    "school",
    "harbor",
    "museum",
    "bakery",
    "park",
    "farm",
    "village",
    "river bank",
    "kitchen",
    "office",
]
FURNITURE = ["table", "shelf", "desk", "bench", "chair", "floor"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TOPICS = [
    "birds",
    "old ships",
    "the moon",
    "mountains",
    "rivers",
    "clocks",
    "bridges",
    "trees",
    "music",
    "stars",
]
WEATHER = ["sunny", "cold", "windy", "rainy", "warm", "quiet", "bright", "cloudy"]


def _sentence(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    (obj, objs), (obj2, _) = rng.sample(OBJECTS, 2)
    color = rng.choice(COLORS)
    place, place2 = rng.sample(PLACES, 2)
    n = rng.randint(2, 20)
    m = rng.randint(1, n - 1)
    k = rng.randint(2, 9)
    templates = [
        f"{name} put {n} {color} {objs} in the {place}.",
        f"The {place} is {n} miles from the {place2}.",
        f"There were {n} {objs} on the {rng.choice(FURNITURE)}. {name} took {m} of them, so {n - m} were left.",
        f"{name} has {n} {objs} and {other} has {m}, so together they have {n + m}.",
        f"{name} likes the {color} {obj} more than the {obj2}.",
        f"In the morning {name} walked to the {place} and bought {n} {objs}.",
        f"Every {rng.choice(DAYS)}, {name} reads a book about {rng.choice(TOPICS)}.",
        f"It was {rng.choice(WEATHER)} at the {place}, so {name} stayed until evening.",
        f"{name} packed {k} boxes with {n} {objs} each, which makes {k * n} {objs}.",
        f"The {obj} near the {place} is {color}.",
        f"{name} gave {other} a {color} {obj} at the {place}.",
        f"After lunch {name} and {other} talked about {rng.choice(TOPICS)} for {n} minutes.",
    ]
    return rng.choice(templates)


def general_text_doc(seed: int, index: int, min_sentences: int = 3, max_sentences: int = 8) -> dict[str, str]:
    rng = random.Random(derive_seed(seed, "general_text", index))
    n = rng.randint(min_sentences, max_sentences)
    return {"id": f"general-{seed}-{index}", "text": " ".join(_sentence(rng) for _ in range(n))}


def generate_general_text(
    n_docs: int, seed: int, min_sentences: int = 3, max_sentences: int = 8, start: int = 0
) -> Iterator[dict[str, str]]:
    """``n_docs`` general-text documents (``{"id", "text"}``), deterministic by seed."""
    for i in range(start, start + n_docs):
        yield general_text_doc(seed, i, min_sentences, max_sentences)


def reasoning_text(
    question: str, thought: str, answer: str, completion: str, form: str, template: ThoughtTemplate
) -> str:
    """The pretraining text of one trace in ``form``: ``chat`` (a chat turn), ``statement``
    (``{question}\n{answer}``) or ``thought`` (a statement whose answer carries the thought)."""
    if form == "chat":
        return render_turn(question, completion)
    if form == "statement":
        return f"{question}\n{answer}"
    return f"{question}\n{template.render(thought, answer)}"


def reasoning_records(
    entries: Iterable[dict[str, Any]],
    teacher: ProceduralTeacher,
    samples_per_entry: int = 1,
    inline: InlineThoughts | None = None,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Prompt + teacher trace records; ``text`` (pretraining) and ``prompt``/``response`` (SFT).

    ``form`` says how ``text`` is written (:func:`reasoning_text`); which records are
    statements, and which of those carry the thought, depends only on (seed, record id)."""
    inline = inline or InlineThoughts()
    template = inline.template or ThoughtTemplate()
    for entry in entries:
        for k in range(samples_per_entry):
            trace = teacher.solve(entry, sample=k)
            rid = f"{entry['id']}#{k}"
            rng = random.Random(derive_seed(seed, "inline-thought", rid))
            form = "chat"
            if rng.random() < inline.statement_fraction:
                form = "thought" if rng.random() < inline.thought_fraction else "statement"
            yield {
                "id": rid,
                "family": entry["family"],
                "prompt": entry["question"],
                "response": trace.completion,
                "text": reasoning_text(
                    entry["question"], trace.thought, trace.answer, trace.completion, form, template
                ),
                "form": form,
                "correct": trace.correct,
                "hash": entry["hash"],
            }
