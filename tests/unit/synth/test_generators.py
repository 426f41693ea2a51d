"""The generators behind Prismatic synthesis."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from stages import tiny_model_dir

from slingshot.config import SynthConfig
from slingshot.synth.generators import HFGenerator, TeacherGenerator, few_shot_prompt, make_generator


def test_hf_generator_interface(tiny_model, train_entries):
    gen = HFGenerator(str(tiny_model), 1.0, 0.75, 0.95, max_problem_tokens=24, max_solution_tokens=16)
    completions = gen.solve(train_entries[0], 3, seed=5)
    assert len(completions) == 3 and all(isinstance(c, str) for c in completions)
    assert gen.solve(train_entries[0], 3, seed=5) == completions  # seeded sampling
    exclude: set[str] = set()
    problems = gen.new_problems(train_entries[:3], 2, seed=1, exclude=exclude)
    assert len(problems) <= 2
    for p in problems:  # an untrained model rarely ends a problem; whatever it wrote is well-formed
        assert p["question"] and "\n\n" not in p["question"] and p["hash"] in exclude
    assert few_shot_prompt(train_entries[:2]).count("Problem:") == 3


def test_make_generator_takes_the_stage_config():
    cfg = SynthConfig(generator={"backend": "teacher", "error_rate": 0.3, "spread": 0.2})
    gen = make_generator(cfg, seed=5)
    assert isinstance(gen, TeacherGenerator)
    assert (gen.teacher.error_rate, gen.teacher.seed, gen.spread) == (0.3, 5, 0.2)


def test_the_vllm_generator_without_vllm_names_the_install(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM imports
    with pytest.raises(ImportError, match="make install-vllm"):
        make_generator(SynthConfig(generator={"backend": "vllm", "model": str(tiny_model)}), seed=0)


def test_few_shot_prompt_text():
    examples = [{"question": " What is 2+2? "}, {"question": "Sort 3, 1."}]
    assert few_shot_prompt(examples) == (
        "Here are some example problems.\n\nProblem: What is 2+2?\n\nProblem: Sort 3, 1.\n\n"
        "Write one new problem of the same kind.\nProblem:"
    )


def test_teacher_solutions_depend_on_the_request_seed(train_entries):
    gen = TeacherGenerator(error_rate=0.5, spread=0.5, seed=0)
    first = gen.solve(train_entries[0], 6, seed=1)
    assert gen.solve(train_entries[0], 6, seed=1) == first
    assert any(gen.solve(train_entries[0], 6, seed=s) != first for s in (2, 3, 4))


def test_hf_generator_stops_on_the_chat_templates_end_of_turn_and_drops_it(tmp_path):
    """A chat model ends its turn with <|im_end|>, not EOS: the generator stops on both, and the
    stop token is no part of the text it returns."""
    from chat_tokenizers import qwen_tokenizer
    from tiny_hf import tiny_llama

    from slingshot.models.hf import save_model_dir

    tokenizer = qwen_tokenizer()
    model_dir = save_model_dir(tiny_llama(vocab=len(tokenizer)), tokenizer, tmp_path / "chat-model")
    gen = HFGenerator(str(model_dir), 1.0, 0.75, 0.95, max_problem_tokens=8, max_solution_tokens=8)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert gen.stop_ids == [tokenizer.eos_token_id, im_end]
    assert gen.rollout.stop_token_ids == gen.stop_ids
    four = tokenizer("four", add_special_tokens=False)["input_ids"]
    assert gen._decode([*four, im_end]) == "four"
    assert gen._decode(four) == "four"


@pytest.mark.vllm
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vllm is not installed (make install-vllm)"
)
def test_the_vllm_generator_writes_what_the_hf_one_does_greedily(small_data, train_entries, tmp_path):
    """The same local model through vLLM: greedy problems and solutions equal the HF backend's."""
    model = tiny_model_dir(tmp_path / "m", Path(small_data["outputs"]["tokenizer_dir"]), heads=2, kv_heads=1)
    made = {
        backend: HFGenerator(str(model), 0.0, 0.0, 1.0, 24, 16, backend=backend) for backend in ("hf", "vllm")
    }
    assert made["vllm"].rollout.__class__.__name__ == "VLLMRollout"
    solved = {backend: gen.solve(train_entries[0], 2, seed=5) for backend, gen in made.items()}
    assert solved["vllm"] == solved["hf"] and all(solved["hf"])
    written = {backend: gen.new_problems(train_entries[:3], 2, 1, set()) for backend, gen in made.items()}
    assert written["vllm"] == written["hf"]
