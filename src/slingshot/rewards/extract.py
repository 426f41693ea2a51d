"""Answer extraction from model output.

The answer is looked for only AFTER the closing ``</think>``: whatever the model wrote
while thinking (drafts, wrong guesses in a box) never counts. Output that opened a
thought and never closed it was cut off by the length limit: it has no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_TAGS = (THINK_OPEN, THINK_CLOSE)  # the default of chat.think_open / chat.think_close
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


@dataclass(frozen=True)
class Extraction:
    """What could be read from one model output."""

    answer: str | None
    source: str  # "boxed" | "answer_tag" | "none" | "truncated"
    thought: str | None

    @property
    def parse_ok(self) -> bool:
        return self.answer is not None


def answer_region(output: str, tags: tuple[str, str] = THINK_TAGS) -> tuple[str | None, str | None]:
    """Split output into (thought, text after ``</think>``); ``tags`` are the thinking tags.

    - ``</think>`` present: the region is what follows its LAST occurrence (the prompt
      may already hold the opening ``<think>``, so only the closing tag is required).
    - ``<think>`` opened but never closed: truncated, region is None.
    - no think tags at all: the whole output is the region (non-reasoning models).
    """
    think_open, think_close = tags
    close = output.rfind(think_close)
    if close >= 0:
        head = output[:close]
        open_ = head.find(think_open)
        thought = head[open_ + len(think_open) :] if open_ >= 0 else head
        return thought.strip(), output[close + len(think_close) :]
    if think_open in output:
        return output.split(think_open, 1)[1].strip(), None
    return None, output


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced (nested) braces; None if unclosed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        i = start
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
                i += 2  # escaped brace is content, not structure
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
            i += 1
    return None


def last_answer_tag(text: str) -> str | None:
    found = _ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def extract(output: str, tags: tuple[str, str] = THINK_TAGS) -> Extraction:
    """Read the final answer: ``\\boxed{}`` first, then ``<answer>`` tags, after ``</think>``."""
    thought, region = answer_region(output, tags)
    if region is None:
        return Extraction(None, "truncated", thought)
    boxed = last_boxed(region)
    if boxed is not None:
        return Extraction(boxed, "boxed", thought)
    tagged = last_answer_tag(region)
    if tagged is not None:
        return Extraction(tagged, "answer_tag", thought)
    return Extraction(None, "none", thought)


def extract_answer(output: str) -> str | None:
    return extract(output).answer


def parse_ok(output: str) -> bool:
    """True when a final answer can be extracted (not truncated, boxed or tagged)."""
    return extract(output).parse_ok
