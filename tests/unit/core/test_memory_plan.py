"""The memory plan (slingshot.memory_plan): checked against measured peaks on CPU, and the
refusal of the shipped Qwen3-1.7B recipe on GPUs too small for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from real_recipe import write_recipe_data

from slingshot.config import ProRLConfig, RLPConfig, SFTConfig
from slingshot.memory_plan import ModelDims, plan_prorl, plan_rlp, plan_sft, stage_parallelism
from slingshot.memory_probe import LiveBytes

CPU = torch.device("cpu")
RECIPE = Path("workflow/config/recipes/qwen3-1.7b-rlp-sft-prorl.yaml")


def _small_qwen3(tmp_path: Path) -> tuple[ModelDims, object]:
    """A config.json-only model directory, its plan dims, and the model (random weights)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    config.save_pretrained(tmp_path)
    torch.manual_seed(0)
    return ModelDims.from_model_dir(tmp_path), AutoModelForCausalLM.from_config(config)


def _measured(fn, *existing: torch.nn.Module) -> int:
    with LiveBytes() as probe:
        for module in existing:
            probe.track(module.parameters())
        fn()
    return probe.peak


def test_dims_come_from_config_json_alone(tmp_path):
    dims, model = _small_qwen3(tmp_path)
    assert dims.params == sum(p.numel() for p in model.parameters())  # the tied head counted once
    assert (dims.hidden, dims.layers, dims.kv_heads, dims.head_dim, dims.vocab) == (64, 2, 2, 16, 4096)
    assert not any(tmp_path.glob("*.safetensors"))


@pytest.mark.parametrize("checkpointing, chunk", [(False, None), (True, 256)])
def test_prorl_plan_is_within_25_percent_of_the_measured_peak(tmp_path, checkpointing, chunk):
    from slingshot.models.hf import enable_activation_checkpointing, frozen_copy
    from slingshot.train.optim import build_optimizer, build_scheduler
    from slingshot.train.policy_update import UpdateSettings, update_on_groups
    from slingshot.train.rl_batch import build_rl_batch
    from slingshot.train.rl_sampling import TrainBatch

    dims, policy = _small_qwen3(tmp_path)
    memory = {"logprob_tokens_per_micro_batch": 2 * 576, "activation_checkpointing": checkpointing}
    cfg = ProRLConfig(
        n_samples=2,
        batch_prompts=4,
        mini_batch_prompts=2,
        kl_coef=0.1,
        rollout={"backend": "vllm"},
        memory={**memory, "logits_chunk_tokens": chunk},
        phases=[{"name": "p", "steps": 1, "max_response_tokens": 64}],
    )
    plan = plan_prorl("prorl-p", cfg, dims, 64, on_gpu=False)
    # Rows as the plan sees them: a 512-token prompt and a full 64-token response.
    generator = torch.Generator().manual_seed(0)
    rows = [
        (
            torch.randint(0, 4096, (512,), generator=generator).tolist(),
            torch.randint(0, 4096, (64,), generator=generator).tolist(),
        )
        for _ in range(8)
    ]
    advantages = torch.randn(8, generator=generator)
    train = TrainBatch([], advantages.view(4, 2), advantages, build_rl_batch(rows, 0))
    policy.train()
    reference = frozen_copy(policy, "device")
    if checkpointing:
        enable_activation_checkpointing(policy)
    optimizer = build_optimizer(policy, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer, 2)
    settings = UpdateSettings.from_config(cfg)
    peak = _measured(
        lambda: update_on_groups(policy, reference, optimizer, scheduler, train, settings, CPU),
        policy,
        reference,
    )
    measured = peak
    assert plan.training_bytes == pytest.approx(measured, rel=0.25)


def test_rlp_plan_is_within_25_percent_of_the_measured_peak(tmp_path):
    from slingshot.algorithms.rlp import rlp_group_advantages
    from slingshot.models.hf import frozen_copy
    from slingshot.rollout import Rollout
    from slingshot.train.optim import build_optimizer, build_scheduler
    from slingshot.train.policy_update import UpdateSettings, ema_teacher_hook, update_on_thoughts
    from slingshot.train.rlp_batch import Position, build_thought_batch
    from slingshot.train.rlp_scoring import score_baseline, score_thoughts

    dims, policy = _small_qwen3(tmp_path)
    cfg = RLPConfig(
        positions_per_step=2,
        group_size=4,
        context_tokens=96,
        thought_tokens=32,
        micro_batch_size=4,
        rollout={"backend": "vllm"},
    )
    plan = plan_rlp("rlp", cfg, dims, on_gpu=False)
    generator = torch.Generator().manual_seed(0)
    open_, close = 1, 2
    positions, rollouts = [], []
    for doc in range(2):  # full-length contexts and thoughts (never closed: </think> appended)
        context = tuple(torch.randint(3, 4096, (96,), generator=generator).tolist())
        positions.append(Position(doc, 96, context, (7,)))
        prompt = [*context, open_]
        rollouts.append(
            [
                Rollout(prompt, torch.randint(3, 4096, (32,), generator=generator).tolist(), False)
                for _ in range(4)
            ]
        )
    batch = build_thought_batch(positions, rollouts, open_, close, 0)
    policy.eval()
    ema = frozen_copy(policy, "device")
    optimizer = build_optimizer(policy, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg.optimizer, 1)
    settings = UpdateSettings.from_config(cfg)

    def step() -> None:
        scores = score_thoughts(policy, batch, cfg.micro_batch_size, CPU, settings.passes)
        score_baseline(ema, positions, 0, cfg.micro_batch_size, CPU, settings.passes)
        advantages = rlp_group_advantages(scores.s_pred.view(2, 4)).reshape(-1)
        hook = ema_teacher_hook(ema, policy, cfg.ema_tau)
        update_on_thoughts(
            policy, optimizer, scheduler, batch, scores.old_logp, advantages, settings, CPU, hook
        )

    measured = _measured(step, policy, ema)
    assert plan.training_bytes == pytest.approx(measured, rel=0.25)


def test_sft_plan_is_within_25_percent_of_the_measured_peak(tmp_path):
    from slingshot.train.optim import build_optimizer
    from slingshot.train.supervised import token_loss_sum

    dims, model = _small_qwen3(tmp_path)
    cfg = SFTConfig(micro_batch_size=2, seq_length=512, attn_implementation="sdpa")
    plan = plan_sft("sft", cfg, dims, on_gpu=False)
    ids = torch.randint(0, 4096, (2, 512), generator=torch.Generator().manual_seed(0))
    allowed = torch.ones(2, 1, 512, 512, dtype=torch.bool).tril()  # a packed row's (block-)causal mask
    batch = {
        "input_ids": ids,
        "position_ids": torch.arange(512).expand(2, 512),
        "targets": ids,
        "attention_mask": allowed,
    }
    model.train()
    optimizer = build_optimizer(model, cfg.optimizer)

    def step() -> None:
        token_loss_sum(model, batch)[0].backward()
        optimizer.step()

    measured = _measured(step, model)
    assert plan.training_bytes == pytest.approx(measured, rel=0.25)


def test_the_parallelism_of_each_stage():
    sft = SFTConfig(resources={"nodes": 2, "gpus_per_node": 8})
    assert stage_parallelism("sft", sft).kind == "fsdp" and stage_parallelism("sft", sft).shard == 16
    assert stage_parallelism("sft", sft, on_gpu=False).kind == "replicated"  # gloo all-reduce
    rlp = RLPConfig(resources={"gpus_per_node": 8})
    assert (stage_parallelism("rlp", rlp).kind, stage_parallelism("rlp", rlp).shard) == ("fsdp", 8)
    assert stage_parallelism("rlp", rlp, on_gpu=False).kind == "replicated"
    replicated = RLPConfig(resources={"gpus_per_node": 8}, data_parallel="allreduce")
    assert (stage_parallelism("rlp", replicated).kind, stage_parallelism("rlp", replicated).shard) == (
        "replicated",
        1,
    )
    prorl = stage_parallelism("prorl", ProRLConfig(resources={"nodes": 4, "gpus_per_node": 8}))
    assert (prorl.kind, prorl.ranks, prorl.shard) == ("fsdp", 32, 32)


def test_fsdp_shards_the_frozen_copy_and_counts_the_policy_gathered_for_generation():
    """Under FSDP2 the reference is a 1/ranks share like the policy; HF generation adds the
    policy gathered whole (bf16 on GPUs), a vLLM push every fp32 tensor gathered whole."""
    dims = ModelDims(
        params=1_000_000,
        layer_params=100_000,
        embedding_params=64_000,
        hidden=64,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=16,
        intermediate=128,
        vocab=1000,
    )
    sharded = ProRLConfig(resources={"gpus_per_node": 4})
    replicated = ProRLConfig(resources={"gpus_per_node": 4}, data_parallel="allreduce")
    a = plan_prorl("prorl", sharded, dims, 64).lines
    b = plan_prorl("prorl", replicated, dims, 64).lines
    assert a["reference copy"] == b["reference copy"] / 4 == 1_000_000 * 4.0 / 4
    assert a["generation (gathered policy)"] == 1_000_000 * 2.0 and "generation (gathered policy)" not in b
    vllm = ProRLConfig(resources={"gpus_per_node": 4}, rollout={"backend": "vllm"})
    assert plan_prorl("prorl", vllm, dims, 64).lines["weight push (gathered)"] == 1_000_000 * 4.0


# --------------------------------------------------------------------------- the shipped recipe


@pytest.fixture
def qwen3_1_7b_models(tmp_path, monkeypatch) -> Path:
    """$SLINGSHOT_MODELS with Qwen3-1.7B-Base (the real dims, config.json only) and the synthesis
    generator; stand-in weight and tokenizer files satisfy the model-directory check."""
    from transformers import Qwen3Config

    config = Qwen3Config(
        hidden_size=2048,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=6144,
        vocab_size=151936,
        tie_word_embeddings=True,
    )
    for name in ("Qwen3-1.7B-Base", "Qwen3-32B"):
        config.save_pretrained(tmp_path / name)
        (tmp_path / name / "model.safetensors").write_bytes(b"")
        (tmp_path / name / "tokenizer.json").write_text("{}")
    monkeypatch.setenv("SLINGSHOT_MODELS", str(tmp_path))
    # The recipe's prompt set and benchmarks (the DAG checks that they exist).
    write_recipe_data(tmp_path / "data")
    monkeypatch.setenv("SLINGSHOT_DATA", str(tmp_path / "data"))
    # The recipe's tracking server (only named: nothing here talks to it).
    monkeypatch.setenv("SLINGSHOT_TRACKING_URI", "http://login01:5000")
    monkeypatch.setenv("SLINGSHOT_TRACKING_CREDENTIALS", str(tmp_path / "credentials"))
    return tmp_path


def _site(tmp_path: Path, gpu_gb: float) -> Path:
    path = tmp_path / f"gpus{gpu_gb:g}.yaml"
    partition = {"gpus_per_node": 8, "cpus_per_node": 96, "max_nodes": 16, "gpu_memory_gb": gpu_gb}
    path.write_text(
        yaml.safe_dump(
            {"name": f"gpus{gpu_gb:g}", "default_partition": "gpu", "partitions": {"gpu": partition}}
        )
    )
    return path


def test_the_qwen3_recipe_fits_80gb_gpus_and_is_refused_on_24gb_ones(qwen3_1_7b_models, tmp_path):
    from slingshot.validate import ConfigError, load_pipeline_config

    big = load_pipeline_config(RECIPE, {"launcher": {"site": str(_site(tmp_path, 80))}})
    assert big.stages.prorl.memory.activation_checkpointing
    with pytest.raises(ConfigError) as refused:
        load_pipeline_config(RECIPE, {"launcher": {"site": str(_site(tmp_path, 24))}})
    problems = [p for p in refused.value.problems if "memory" in p]
    assert len(problems) == 4  # rlp, sft and both ProRL phases
    prorl = next(p for p in problems if "prorl-len16k" in p)
    assert prorl.startswith("stages.prorl.memory: stage prorl-len16k needs ~")
    assert "gpu_memory_gb: 24" in prorl and "allows 12.0 GiB" in prorl  # vLLM takes half
    assert "stages.prorl.memory.frozen_copy: cpu" in prorl and "gpu_memory_utilization" in prorl
    assert f"[{RECIPE}:" in prorl  # the file and line of the stage's memory section


def test_plan_command_prints_every_stage_and_fails_when_one_does_not_fit(qwen3_1_7b_models, capsys):
    from slingshot.cli import main

    assert main(["plan", "--memory", str(RECIPE), "--gpu-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    for stage in ("rlp", "sft", "prorl-len8k", "prorl-len16k"):
        assert f"[main] {stage}: " in out
    for line in (
        "weights",
        "gradients",
        "optimizer state",
        "reference copy",
        "EMA teacher copy",
        "activations",
        "logits",
    ):
        assert f"    {line} " in out
    assert "40.00 GiB  (rollout.gpu_memory_utilization=0.5)" in out  # ProRL's vLLM share of 80 GiB
    assert main(["plan", "--memory", str(RECIPE), "--gpu-memory-gb", "24"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert os.environ["SLINGSHOT_MODELS"] == str(qwen3_1_7b_models)
