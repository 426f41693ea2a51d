"""Procedural reasoning teacher: short, verifiably correct step-by-step traces.

Where no strong model exists (the CPU recipe), this stands in for the generator of
Prismatic synthesis and for the reasoning data of FLR pretraining. Each renderer
recomputes the answer from the entry's metadata (it never copies ``entry["answer"]``),
so the tests that run every trace through the verifier really check the reasoning.

``error_rate`` makes wrong traces on purpose (one intermediate step corrupted and a
different final answer), so the majority-vote quality filter has something to reject.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from slingshot.data.arith import fmt_num, reduction_steps
from slingshot.data.tasks import content_hash, derive_seed, get_family, make_instance

Rendered = tuple[list[str], str]  # (reasoning steps, final answer)


@dataclass(frozen=True)
class Trace:
    """One solution: ``completion`` is what a model should write after the prompt."""

    entry_id: str
    family: str
    prompt: str
    thought: str
    answer: str
    correct: bool

    @property
    def completion(self) -> str:
        return format_completion(self.thought, self.answer)

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "completion": self.completion}


def format_completion(thought: str, answer: str) -> str:
    return f"<think>\n{thought}\n</think>\n\\boxed{{{answer}}}"


def task_prompt(entry: dict) -> str:
    """The user turn for a task entry: what SFT traces answer and what RL samples from.

    The question alone: reasoning-gym questions already say what to compute, and the
    answer format (``<think>...</think>`` then ``\\boxed{}``) is what the traces teach.
    The teacher's traces, ProRL's prompts, evaluation's prompts
    (:func:`slingshot.evaluation.prompt_text`), synthesis's pool problems and its HF
    generator's solution prompts go through here, and the reasoning corpus
    (``data.synthetic.reasoning_records``) holds the same question text, so SFT, RL and
    evaluation condition the model on the same text.
    """
    return str(entry["question"])


# --------------------------------------------------------------------------- renderers


def _arith(entry: dict) -> Rendered:
    forms, value = reduction_steps(entry["metadata"]["expression"])
    steps = [forms[0]] + [f"= {f}" for f in forms[1:]]
    return steps, fmt_num(value)


def _products(entry: dict) -> Rendered:
    expr = entry["metadata"]["expression"]
    nums = [int(x) for x in re.findall(r"-?\d+", expr)]
    if len(nums) != 2 or abs(nums[1]) < 10:
        return _arith(entry)
    # Long multiplication by place value: a * b = sum of a * (digit * 10^k).
    a, b = nums
    sign = -1 if b < 0 else 1
    digits = str(abs(b))
    parts = [sign * int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
    prods = [a * p for p in parts]
    steps = [
        f"{a} * {b} = " + " + ".join(f"{a} * {p}" for p in parts),
        "= " + " + ".join(str(p) for p in prods),
        f"= {sum(prods)}",
    ]
    return steps, str(sum(prods))


def _euclid(a: int, b: int, steps: list[str]) -> int:
    a, b = max(a, b), min(a, b)
    while b:
        q, r = divmod(a, b)
        steps.append(f"{a} = {q} * {b} + {r}")
        a, b = b, r
    return a


def _gcd(entry: dict) -> Rendered:
    nums = [int(x) for x in entry["metadata"]["numbers"]]
    steps: list[str] = []
    g = nums[0]
    for n in nums[1:]:
        steps.append(f"gcd({g}, {n}):")
        g = _euclid(g, n, steps)
        steps.append(f"remainder 0, so gcd = {g}")
    return steps, str(g)


def _lcm(entry: dict) -> Rendered:
    nums = [int(x) for x in entry["metadata"]["numbers"]]
    steps: list[str] = []
    acc = nums[0]
    for n in nums[1:]:
        g = _euclid(acc, n, steps)
        new = acc * n // g
        steps.append(f"gcd = {g}, lcm({acc}, {n}) = {acc} * {n} / {g} = {new}")
        acc = new
    return steps, str(acc)


def _number_sorting(entry: dict) -> Rendered:
    meta = entry["metadata"]
    nums = [str(x) for x in meta["original_numbers"]]
    desc = meta["direction"] == "descending"
    remaining = list(nums)
    steps = [f"Sort {', '.join(nums)} in {meta['direction']} order."]
    out: list[str] = []
    while remaining:
        pick = (max if desc else min)(remaining, key=float)
        remaining.remove(pick)
        out.append(pick)
        steps.append(f"{'largest' if desc else 'smallest'} left: {pick}")
    return steps, str(out)


def _letter_counting(entry: dict) -> Rendered:
    meta = entry["metadata"]
    letter = str(meta["target_letter"]).lower()
    counts = [(w, w.lower().count(letter)) for w in meta["span"]]
    steps = [f"Count '{letter}' in each word:"] + [f"{w}: {c}" for w, c in counts]
    total = sum(c for _, c in counts)
    steps.append(" + ".join(str(c) for _, c in counts) + f" = {total}")
    return steps, str(total)


def _linear(node: ast.AST, var: str) -> tuple[Fraction, Fraction]:
    """(coefficient, constant) of a linear expression in one variable."""
    if isinstance(node, ast.Constant):
        return Fraction(0), Fraction(str(node.value))
    if isinstance(node, ast.Name):
        if node.id != var:
            raise ValueError(f"unexpected symbol {node.id!r}")
        return Fraction(1), Fraction(0)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        a, b = _linear(node.operand, var)
        return -a, -b
    if isinstance(node, ast.BinOp):
        la, lb = _linear(node.left, var)
        ra, rb = _linear(node.right, var)
        if isinstance(node.op, ast.Add):
            return la + ra, lb + rb
        if isinstance(node.op, ast.Sub):
            return la - ra, lb - rb
        if isinstance(node.op, ast.Mult) and (la == 0 or ra == 0):
            return la * rb + ra * lb, lb * rb
    raise ValueError(f"not a linear expression: {ast.dump(node)}")


def _simple_equations(entry: dict) -> Rendered:
    meta = entry["metadata"]
    var = meta["variable"]
    lhs_s, rhs_s = meta["equation"].split("=")
    la, lb = _linear(ast.parse(lhs_s.strip(), mode="eval").body, var)
    ra, rb = _linear(ast.parse(rhs_s.strip(), mode="eval").body, var)
    a, c = la - ra, rb - lb
    if a == 0:
        raise ValueError(f"equation has no unique solution: {meta['equation']}")
    collected = f"{fmt_num(a)}*{var} + {fmt_num(lb)} = {fmt_num(rb)}"
    steps = [meta["equation"]] + ([collected] if collected != meta["equation"] else [])
    steps += [
        f"{fmt_num(a)}*{var} = {fmt_num(rb)} - {fmt_num(lb)} = {fmt_num(c)}",
        f"{var} = {fmt_num(c)} / {fmt_num(a)} = {fmt_num(c / a)}",
    ]
    return steps, fmt_num(c / a)


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base_conversion(entry: dict) -> Rendered:
    meta = entry["metadata"]
    src, sb, tb = str(meta["source_repr"]).lower(), int(meta["source_base"]), int(meta["target_base"])
    steps: list[str] = []
    value = 0
    for ch in src:
        value = value * sb + _DIGITS.index(ch)
    if sb != 10:
        n = len(src)
        terms = [f"{_DIGITS.index(ch)}*{sb}^{n - 1 - i}" for i, ch in enumerate(src)]
        steps.append(f"{src} (base {sb}) = {' + '.join(terms)} = {value}")
    if tb == 10:
        return steps or [f"{src} is already base 10"], str(value)
    digits: list[str] = []
    n = value
    while True:
        q, r = divmod(n, tb)
        steps.append(f"{n} / {tb} = {q} r {r}")
        digits.append(_DIGITS[r])
        n = q
        if n == 0:
            break
    out = "".join(reversed(digits))
    steps.append(f"remainders bottom-up: {out}")
    return steps, out


def _countdown(entry: dict) -> Rendered:
    meta = entry["metadata"]
    expr = meta["expression"]
    forms, value = reduction_steps(expr)
    steps = [f"Numbers {', '.join(map(str, meta['numbers']))}, target {meta['target']}.", f"try {forms[0]}"]
    steps += [f"= {f}" for f in forms[1:]]
    steps.append(f"{fmt_num(value)} is the target" if value == meta["target"] else f"{fmt_num(value)} misses")
    return steps, expr


def _prime_factorization(entry: dict) -> Rendered:
    n = int(entry["metadata"]["number"])
    steps: list[str] = []
    factors: list[int] = []
    p = 2
    while p * p <= n:
        while n % p == 0:
            steps.append(f"{n} / {p} = {n // p}")
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        steps.append(f"{n} is prime")
        factors.append(n)
    return steps, " × ".join(str(f) for f in factors)


def _spell_backward(entry: dict) -> Rendered:
    word = str(entry["metadata"]["word"])
    return [f"letters: {'-'.join(word)}", f"reversed: {'-'.join(reversed(word))}"], word[::-1]


RENDERERS: dict[str, Callable[[dict], Rendered]] = {
    "basic_arithmetic": _arith,
    "chain_sum": _arith,
    "products": _products,
    "gcd": _gcd,
    "lcm": _lcm,
    "number_sorting": _number_sorting,
    "letter_counting": _letter_counting,
    "simple_equations": _simple_equations,
    "base_conversion": _base_conversion,
    "countdown": _countdown,
    "prime_factorization": _prime_factorization,
    "spell_backward": _spell_backward,
}


def supported_datasets() -> list[str]:
    return sorted(RENDERERS)


# --------------------------------------------------------------------------- corruption


def _bump_int(text: str, rng: random.Random) -> str:
    value = int(text)
    delta = rng.choice([-1, 1]) * rng.randint(1, max(1, min(9, abs(value) // 3 + 1)))
    return str(value + delta)


def _corrupt_step(line: str, rng: random.Random) -> str:
    """Change one number in a step (or two adjacent letters when it has none)."""
    nums = list(re.finditer(r"\d+", line))
    if nums:
        m = rng.choice(nums)
        return line[: m.start()] + _bump_int(m.group(), rng).lstrip("-") + line[m.end() :]
    letters = [
        i
        for i in range(len(line) - 1)
        if line[i].isalpha() and line[i + 1].isalpha() and line[i] != line[i + 1]
    ]
    if letters:
        i = rng.choice(letters)
        return line[:i] + line[i + 1] + line[i] + line[i + 2 :]
    return line + " (carried 1)"


def _wrong_answer(dataset: str, entry: dict, answer: str, rng: random.Random) -> str:
    if dataset == "number_sorting":
        items = ast.literal_eval(answer)
        pairs = [i for i in range(len(items) - 1) if float(items[i]) != float(items[i + 1])]
        if pairs:
            i = rng.choice(pairs)
            items[i], items[i + 1] = items[i + 1], items[i]
        else:
            items[0] = str(float(items[0]) + 1)
        return str(items)
    if dataset == "spell_backward":
        pairs = [i for i in range(len(answer) - 1) if answer[i] != answer[i + 1]]
        if not pairs:
            return answer + answer[-1]
        i = rng.choice(pairs)
        return answer[:i] + answer[i + 1] + answer[i] + answer[i + 2 :]
    if dataset == "base_conversion":
        tb = int(entry["metadata"]["target_base"])
        last = _DIGITS.index(answer[-1])
        return answer[:-1] + _DIGITS[(last + rng.randint(1, tb - 1)) % tb]
    if dataset in ("countdown", "prime_factorization"):
        nums = list(re.finditer(r"\d+", answer))
        m = rng.choice(nums)
        return answer[: m.start()] + str(int(m.group()) + 1) + answer[m.end() :]
    try:
        value = Fraction(answer)
    except (ValueError, ZeroDivisionError):
        return answer + "0"
    if value.denominator == 1:
        return _bump_int(str(value.numerator), rng)
    return fmt_num(value + 1)


# --------------------------------------------------------------------------- teacher


def render_trace(entry: dict, wrong: bool = False, rng: random.Random | None = None) -> Trace:
    """The trace for one entry; ``wrong=True`` corrupts a step and the final answer."""
    dataset = entry.get("dataset") or entry["metadata"]["source_dataset"]
    if dataset not in RENDERERS:
        raise KeyError(
            f"no teacher renderer for dataset {dataset!r}; supported: {', '.join(supported_datasets())}"
        )
    steps, answer = RENDERERS[dataset](entry)
    if wrong:
        from slingshot.rewards.verify import CORRECT_THRESHOLD, score_answer

        rng = rng or random.Random(0)
        steps = list(steps)
        i = rng.randrange(1, len(steps)) if len(steps) > 1 else 0
        steps[i] = _corrupt_step(steps[i], rng)
        for _ in range(20):  # a perturbed answer can still be right (countdown); draw again
            bad = _wrong_answer(dataset, entry, answer, rng)
            if score_answer(entry, bad) < CORRECT_THRESHOLD:
                answer = bad
                break
        else:
            raise RuntimeError(f"could not make a wrong answer for {entry.get('id')}")
    steps.append(f"answer: {answer}")
    return Trace(
        entry_id=str(entry.get("id", "")),
        family=str(entry.get("family", dataset)),
        prompt=task_prompt(entry),
        thought="\n".join(steps),
        answer=answer,
        correct=not wrong,
    )


class ProceduralTeacher:
    """Writes solutions (with a controlled error rate) and new problems, from a seed."""

    def __init__(self, error_rate: float = 0.0, seed: int = 0) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.error_rate = error_rate
        self.seed = seed

    def _rng(self, *parts: object) -> random.Random:
        return random.Random(derive_seed(self.seed, *parts))

    def solve(self, entry: dict, sample: int = 0) -> Trace:
        """One solution; wrong with probability ``error_rate`` (deterministic per entry, sample)."""
        rng = self._rng("solve", entry.get("id") or entry["question"], sample)
        return render_trace(entry, wrong=rng.random() < self.error_rate, rng=rng)

    def sample(self, entry: dict, k: int) -> list[Trace]:
        """``k`` independent solutions, as a generator model would give for a majority vote."""
        return [self.solve(entry, i) for i in range(k)]

    def new_problems(
        self,
        examples: Sequence[dict],
        n: int,
        seed: int | None = None,
        spread: float = 0.5,
        exclude_hashes: set[str] | None = None,
    ) -> list[dict]:
        """``n`` new problems "in the style of" the few-shot examples.

        For each new problem an example is drawn, and a fresh reasoning-gym instance of
        its family is generated with each difficulty knob scaled by a factor in
        [1 - spread, 1 + spread] (clamped to the family's bounds). Questions whose hash
        is in ``exclude_hashes`` (the held-out sets) or already produced are skipped.
        """
        if not examples:
            raise ValueError("new_problems needs at least one example")
        base = self.seed if seed is None else seed
        rng = random.Random(derive_seed(base, "new_problems"))
        exclude = set(exclude_hashes or ())
        exclude |= {content_hash(e["question"]) for e in examples}
        out: list[dict] = []
        attempt = 0
        while len(out) < n:
            if attempt > 50 * n + 100:
                raise RuntimeError(f"only {len(out)} new problems of {n} after {attempt} attempts")
            ex = rng.choice(list(examples))
            fam = get_family(ex["family"])
            kwargs = perturb_kwargs(
                {**fam.kwargs, **(ex.get("dataset_kwargs") or {})}, fam.knobs, rng, spread
            )
            s = derive_seed(base, "new", attempt)
            attempt += 1
            entry = make_instance(fam, kwargs, s, "synth")
            if entry is None or entry["hash"] in exclude:
                continue
            exclude.add(entry["hash"])
            out.append(entry)
        return out


def perturb_kwargs(
    kwargs: dict[str, Any], knobs: dict[str, tuple[int, int]], rng: random.Random, spread: float
) -> dict[str, Any]:
    """Scale each knob by a random factor within bounds; keep each ``min_x <= max_x``."""
    out = dict(kwargs)
    for key, (lo, hi) in sorted(knobs.items()):
        cur = out.get(key, lo)
        factor = rng.uniform(max(0.0, 1.0 - spread), 1.0 + spread)
        out[key] = int(min(hi, max(lo, round(cur * factor))))
        if key.startswith("max_"):
            mkey = "min_" + key[4:]
            if mkey in out and out[mkey] > out[key]:
                out[mkey] = type(out[mkey])(out[key])
    return out


def error_rate_of(traces: Sequence[Trace]) -> float:
    return sum(not t.correct for t in traces) / max(1, len(traces))


__all__ = [
    "ProceduralTeacher",
    "RENDERERS",
    "Trace",
    "error_rate_of",
    "format_completion",
    "perturb_kwargs",
    "render_trace",
    "supported_datasets",
    "task_prompt",
]
