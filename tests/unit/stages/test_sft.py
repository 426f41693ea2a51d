"""SFT stage and the shared supervised loop: response-only loss, packing without
cross-example attention, exact resume, data-parallel equivalence, and the stage's outputs."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
import torch

from slingshot.data.packing import IGNORE_INDEX, pack_sft, tokenize_sft
from slingshot.models.hf import load_model_and_tokenizer
from slingshot.train.supervised import (
    attention_layout,
    collate,
    per_example_loss,
    plan_rows,
    token_loss_sum,
)

HERE = Path(__file__).resolve().parent
SUPPORT = HERE.parents[1] / "support"
sys.path.insert(0, str(HERE))

from sft_worker import TINY, synth_dataset  # noqa: E402


@pytest.fixture(scope="module")
def env(small_data, tmp_path_factory):
    from stages import tiny_model_dir

    root = tmp_path_factory.mktemp("sft")
    tokenizer_dir = small_data["outputs"]["tokenizer_dir"]
    model_dir = tiny_model_dir(root / "init", Path(tokenizer_dir))
    dataset = synth_dataset(root / "synth", small_data["outputs"]["tasks_train"], 80)
    upstream = {
        "data": small_data,
        "synth": {"kind": "synth", "key": "synth", "outputs": {"dataset": str(dataset)}},
    }
    return {"root": root, "model_dir": model_dir, "dataset": dataset, "upstream": upstream}


def examples_for(tokenizer, n: int = 4):
    from slingshot.stages.sft import split_completion

    pairs = [
        ("Calculate 3 + 4.", "<think>\n3 + 4\n= 7\n</think>\n\\boxed{7}"),
        ("Sort 3, 1, 2.", "<think>\nsmallest first: 1, 2, 3\n</think>\n\\boxed{1, 2, 3}"),
        ("What is gcd(12, 18)?", "<think>\n18 = 1*12 + 6\n12 = 2*6\n</think>\n\\boxed{6}"),
        ("Spell cat backward.", "<think>\nt a c\n</think>\n\\boxed{tac}"),
    ]
    out = []
    for i, (prompt, completion) in enumerate(pairs[:n]):
        thought, answer = split_completion(completion)
        out.append(tokenize_sft(tokenizer, prompt, answer, thought, example_id=str(i)))
    return out


# --------------------------------------------------------------------------- data format


def test_completion_renders_back_exactly(env):
    """The teacher's completion goes through the chat template unchanged, and only it is supervised."""
    from datasets import load_from_disk

    from slingshot.stages.sft import split_completion

    _, tokenizer = load_model_and_tokenizer(env["model_dir"])
    row = load_from_disk(str(env["dataset"]))[0]
    thought, answer = split_completion(row["solution"])
    ex = tokenize_sft(tokenizer, row["problem"], answer, thought)
    supervised = [t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == row["solution"] + tokenizer.eos_token
    prompt = tokenizer.decode(
        [t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label == IGNORE_INDEX]
    )
    assert row["problem"] in prompt and "<think>" not in prompt


def test_held_out_split_is_by_prompt_and_order_free():
    from slingshot.stages.sft import held_out_prompts, weighted

    prompts = [f"problem {i}" for i in range(100)] * 3  # three solutions per prompt
    held = held_out_prompts(prompts, 0.1, 1000)
    assert len(held) == 10
    assert held == held_out_prompts(list(reversed(prompts)), 0.1, 1000)
    assert len(held_out_prompts(prompts, 0.5, 7)) == 7
    assert weighted(10, 2.5, 0, 0).count(3) in (2, 3) and len(weighted(10, 2.5, 0, 0)) == 25
    assert weighted(10, 0.3, 0, 1) == weighted(10, 0.3, 0, 1) and len(weighted(10, 0.3, 0, 1)) == 3


# --------------------------------------------------------------------------- loss on the response only


def test_prompt_tokens_contribute_zero_gradient(env):
    model, tokenizer = load_model_and_tokenizer(env["model_dir"])
    ex = examples_for(tokenizer, 1)[0]
    # Labels: -100 exactly on the rendered prompt (through "<|assistant|>\n"), ids after it.
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Calculate 3 + 4."}], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]

    batch = collate([[ex]], tokenizer.pad_token_id, None, attention_layout(model))
    prompt_targets = batch["targets"][0] == IGNORE_INDEX  # positions predicting a prompt token

    def grads(perturb: bool) -> list[torch.Tensor]:
        model.zero_grad()
        handle = None
        if perturb:  # change the predictions at prompt positions only: a loss that saw them would move

            def hook(_module, _inputs, out):
                noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * 5.0
                return out + noise * prompt_targets.view(1, -1, 1)

            handle = model.lm_head.register_forward_hook(hook)
        loss, count = token_loss_sum(model, batch)
        loss.backward()
        if handle:
            handle.remove()
        assert count == ex.n_supervised - (ex.labels[0] != IGNORE_INDEX)
        return [p.grad.clone() for p in model.parameters()]

    base, perturbed = grads(False), grads(True)
    assert any(g.abs().sum() > 0 for g in base)
    for a, b in zip(base, perturbed, strict=True):
        assert torch.equal(a, b)

    # Control: perturbing a response position does change the gradient.
    last_supervised = (batch["targets"][0] != IGNORE_INDEX).nonzero()[-1]
    prompt_targets[:] = False
    prompt_targets[last_supervised] = True
    changed = grads(True)
    assert any(not torch.equal(a, b) for a, b in zip(base, changed, strict=True))


# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize(("arch", "attn"), [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa")])
def test_packed_loss_equals_unpacked(env, small_data, tmp_path, arch, attn):
    from stages import tiny_model_dir

    from slingshot.models.hf import load_causal_lm

    model_dir = tiny_model_dir(tmp_path / arch, Path(small_data["outputs"]["tokenizer_dir"]), arch=arch)
    _, tokenizer = load_model_and_tokenizer(model_dir)
    model = load_causal_lm(model_dir)
    model.config._attn_implementation = attn
    model.eval()
    assert attention_layout(model) == ("additive" if attn == "eager" else "bool")
    exs = examples_for(tokenizer)
    width = sum(len(e.input_ids) for e in exs) + 5  # trailing padding too
    packed = per_example_loss(model, exs, tokenizer.pad_token_id, width, packed=True)
    alone = per_example_loss(model, exs, tokenizer.pad_token_id, None, packed=False)
    for p, a in zip(packed, alone, strict=True):
        assert abs(p - a) < 1e-5 * max(1.0, abs(a)), (packed, alone)

    # The whole packed batch (two rows) sums to the unpacked sum.
    rows = collate([exs[:2], exs[2:]], tokenizer.pad_token_id, width, attention_layout(model))
    with torch.no_grad():
        total, count = token_loss_sum(model, rows)
    assert abs(float(total) - sum(alone)) < 1e-4
    assert count == sum(e.n_supervised - (e.labels[0] != IGNORE_INDEX) for e in exs)

    # Control: a plain causal mask over the packed row lets examples see each other.
    leaky = collate([exs], tokenizer.pad_token_id, width, "bool")
    leaky["attention_mask"] = torch.ones(1, 1, width, width, dtype=torch.bool).tril()
    with torch.no_grad():
        mixed, _ = token_loss_sum(model, leaky)
    assert abs(float(mixed) - sum(alone)) > 1e-3


def test_plan_rows_places_like_pack_sft(env):
    _, tokenizer = load_model_and_tokenizer(env["model_dir"])
    from slingshot.stages.sft import synth_records, tokenize_records

    exs = tokenize_records(tokenizer, synth_records(env["dataset"]), 256)
    order = list(reversed(range(len(exs))))
    planned = plan_rows([len(e.input_ids) for e in exs], order, 256, packing=True, lookback=4)
    packed = pack_sft([exs[i] for i in order], 256, tokenizer.pad_token_id, lookback=4)
    assert [[exs[i].id for i in row] for row in planned] == [row.example_ids for row in packed]
    assert len(planned) < len(exs)  # several examples per row


# --------------------------------------------------------------------------- the stage


def spec_for(env, name: str, overrides: dict | None = None, **extra) -> dict:
    return {
        "root": str(env["root"] / name),
        "overrides": {**TINY, **(overrides or {})},
        "upstream": env["upstream"],
        "init_model": str(env["model_dir"]),
        **extra,
    }


@pytest.fixture(scope="module")
def reference_run(env):
    from sft_worker import run_stage

    return run_stage(spec_for(env, "reference"))


def test_stage_trains_and_writes_a_model(env, reference_run):
    from slingshot.models.hf import check_model_dir

    record = reference_run
    steps = {int(k): v for k, v in record["steps"].items()}
    last = max(steps)
    assert last >= 4
    assert steps[last]["loss"] < steps[1]["loss"]
    assert "val/loss" in steps[2] and "val/loss" in steps[last]
    assert record["metrics"]["val/loss"] == steps[last]["val/loss"]
    model_dir = Path(record["outputs"]["model_dir"])
    check_model_dir(model_dir)
    assert record["models"] == [str(model_dir)]
    assert [name for name, _ in record["inputs"]] == ["synth"]
    assert record["extra"]["sft"]["packing"] is True
    assert record["extra"]["sft"]["eval_examples"] > 0
    # The model written is the model trained: its held-out loss is the one logged.
    trained, tokenizer = load_model_and_tokenizer(model_dir)
    initial, _ = load_model_and_tokenizer(env["model_dir"])
    before = initial.state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in trained.state_dict().items())


def test_kill_and_resume_reaches_the_same_loss(env, reference_run):
    from sft_worker import run_stage

    first = run_stage(spec_for(env, "resumed", stop_after=2, interval=100))
    assert first["interrupted_at"] == 2
    second = run_stage(spec_for(env, "resumed"))  # fresh context, same work dir
    assert second["interrupted_at"] is None
    ref = reference_run["steps"]
    resumed_steps = sorted(int(k) for k in second["steps"])
    assert resumed_steps[0] == 3  # resumed after the checkpoint, not from scratch
    for step in map(str, resumed_steps):
        for key in ("loss", "grad_norm", "lr", "tokens"):
            assert second["steps"][step][key] == pytest.approx(ref[step][key], rel=1e-6, abs=1e-7), (
                step,
                key,
            )
    assert second["metrics"]["val/loss"] == pytest.approx(reference_run["metrics"]["val/loss"], rel=1e-6)
    a = load_model_and_tokenizer(second["outputs"]["model_dir"])[0].state_dict()
    b = load_model_and_tokenizer(reference_run["outputs"]["model_dir"])[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_rank_spec(env, name: str, overrides: dict, **extra) -> dict:
    out = str(env["root"] / f"{name}.json")
    return spec_for(env, name, overrides, world_size=2, port=free_port(), out=out, **extra)


def run_two_ranks(env, name: str, overrides: dict, **extra) -> dict:
    from sft_worker import finish_ranks, start_ranks

    spec = two_rank_spec(env, name, overrides, **extra)
    return finish_ranks(start_ranks(spec, env["root"] / f"{name}.spec.json"), spec)


def assert_same_training(two: dict, one: dict, rel: float) -> None:
    assert two["world_size"] == 2
    assert two["steps"].keys() == one["steps"].keys()
    for step in one["steps"]:
        for key in ("loss", "grad_norm", "tokens"):
            assert two["steps"][step][key] == pytest.approx(one["steps"][step][key], rel=rel), (step, key)
    a = load_model_and_tokenizer(two["outputs"]["model_dir"])[0].state_dict()
    b = load_model_and_tokenizer(one["outputs"]["model_dir"])[0].state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-4, rtol=1e-3), k


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["allreduce", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(env, reference_run, mode):
    # global batch 4: reference 1 process x 2 micro-batches of 2; here 2 processes x 1 of 2.
    two = run_two_ranks(env, f"dp-{mode}", {"data_parallel": mode})
    assert_same_training(two, reference_run, rel=1e-4)


def assert_continues_like(resumed: dict, reference: dict, first: int) -> None:
    """``resumed`` ran steps ``first``.. after a resume; they match ``reference``'s (2 ranks
    sum in another order than 1: rel 1e-4, as for the data-parallel equivalence)."""
    steps = sorted(int(k) for k in resumed["steps"])
    assert steps[0] == first and str(steps[-1]) in reference["steps"]
    for step in map(str, steps):
        for key in ("loss", "grad_norm", "lr", "tokens"):
            want = reference["steps"][step][key]
            assert resumed["steps"][step][key] == pytest.approx(want, rel=1e-4), (step, key)
    a = load_model_and_tokenizer(resumed["outputs"]["model_dir"])[0].state_dict()
    b = load_model_and_tokenizer(reference["outputs"]["model_dir"])[0].state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-4, rtol=1e-3), k


def test_fsdp_checkpoint_of_two_ranks_killed_mid_save_resumes_on_one(env, reference_run):
    """2 ranks shard the model (FSDP2 over gloo) and each writes its shards; the job is killed
    while the step-4 checkpoint waits for COMPLETE, so step 2 stays in charge and one process
    resumes from it with the same global batches and the same following losses."""
    import time

    from sft_worker import start_ranks

    from slingshot.checkpoint import CheckpointManager

    name = "fsdp-2to1"
    spec = two_rank_spec(env, name, {"data_parallel": "fsdp"}, interval=2)
    procs = start_ranks(spec, env["root"] / f"{name}.spec.json", {"SLINGSHOT_TEST_HOLD_SAVE": "4"})
    work = env["root"] / name / "work"
    try:
        deadline = time.monotonic() + 300
        while not list(work.glob("*/sft/checkpoints/.held-step-4")):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                p.communicate()[0][-3000:] for p in procs if p.poll() is not None
            ]
            time.sleep(0.2)
        held = list(work.glob("*/sft/checkpoints/.held-step-4"))[0]
        partial = Path(held.read_text().split()[0])
        # Every rank wrote its shard and RNG before the (held) publication.
        names = {p.name for p in partial.rglob("*") if p.is_file()}
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "parts.pt"} <= names
        assert {"rng-rank00000.pt", "rng-rank00001.pt"} <= names
        sizes = [(partial / "dcp" / f"__{r}_0.distcp").stat().st_size for r in range(2)]
        assert min(sizes) > 0.3 * max(sizes)  # the tensors are split, not all on rank 0
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    manager = CheckpointManager(held.parent)
    assert manager.latest().step == 2  # the killed save did not replace the previous checkpoint
    assert not (partial / "COMPLETE").exists()

    from sft_worker import run_stage

    resumed = run_stage(spec_for(env, name, {"data_parallel": "fsdp"}))  # 1 process, same work dir
    assert resumed["world_size"] == 1 and resumed["interrupted_at"] is None
    assert_continues_like(resumed, reference_run, first=3)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_ranks_allreduce(env, reference_run):
    from sft_worker import run_stage

    name = "allreduce-1to2"
    first = run_stage(spec_for(env, name, {"data_parallel": "allreduce"}, stop_after=2, interval=100))
    assert first["interrupted_at"] == 2
    resumed = run_two_ranks(env, name, {"data_parallel": "allreduce"})
    assert resumed["world_size"] == 2
    assert_continues_like(resumed, reference_run, first=3)


def test_user_dataset_is_mixed_in_by_weight(env, tmp_path):
    from sft_worker import run_stage

    extra = tmp_path / "extra.jsonl"
    with open(extra, "w") as handle:
        for i in range(10):
            completion = f"<think>\n{i} + {i} = {2 * i}\n</think>\n\\boxed{{{2 * i}}}"
            handle.write(json.dumps({"question": f"Double {i}.", "solution": completion}) + "\n")
    dataset = {"path": str(extra), "prompt_field": "question", "response_field": "solution", "weight": 2.0}
    overrides = {
        "extra_datasets": [dataset],
        "eval_fraction": 0.0,
        "epochs": 0.2,
        "attn_implementation": "eager",
    }
    record = run_stage(spec_for(env, "mixed", overrides))
    assert record["extra"]["sft"]["train_examples"] == 80 + 2 * 10
    assert record["extra"]["sft"]["eval_examples"] == 0
    assert record["extra"]["sft"]["attention"] == "additive"  # eager: packed through an additive mask
    assert [name for name, _ in record["inputs"]] == ["synth", "sft-extra0:extra.jsonl"]
    assert all(len(digest) == 64 for _, digest in record["inputs"])

    only_user = run_stage(spec_for(env, "user-only", {**overrides, "use_synth": False, "epochs": 1}))
    assert only_user["extra"]["sft"]["train_examples"] == 20
    assert [name for name, _ in only_user["inputs"]] == ["sft-extra0:extra.jsonl"]


def test_synth_dataset_random_subset_trains_on_the_control_set_and_is_named_when_missing(env):
    from sft_worker import run_stage

    control = synth_dataset(env["root"] / "control", env["upstream"]["data"]["outputs"]["tasks_train"], 30)
    synth = {**env["upstream"]["synth"], "outputs": {"dataset": str(env["dataset"])}}
    with_control = {**synth, "outputs": {**synth["outputs"], "random_subset_dataset": str(control)}}
    overrides = {"synth_dataset": "random_subset", "eval_fraction": 0.0, "epochs": 0.2}
    record = run_stage(
        {**spec_for(env, "control", overrides), "upstream": {**env["upstream"], "synth": with_control}}
    )
    assert record["extra"]["sft"]["train_examples"] == 30  # the control set, not the 80 selected
    with pytest.raises(
        ValueError,
        match="stages.sft.synth_dataset is random_subset, but synthesis synth wrote no random_subset_dataset",
    ):
        run_stage({**spec_for(env, "no-control", overrides), "upstream": {**env["upstream"], "synth": synth}})
