"""The prepared GPU check: one script, a few minutes on one GPU, every code path that only a
GPU exercises, and one JSON + one Markdown table of what it measured.

    python bench/gpu/check.py --out OUT --wheels bench/gpu/wheels     # on the GPU machine
    python bench/gpu/check.py --out OUT --cpu                           # the same checks, tiny, on CPU

Each check runs in its own process under its own time limit (a hang or a crash costs that
check, not the run) and the tables are rewritten after every check, so a run cut short
still returns what it measured. Checks:

- matmul: bf16 matrix-product TFLOP/s measured on this device (the MFU peak) beside the
  datasheet's.
- megatron_step: the pretraining stage's Megatron-Core train step in bf16 (local layer spec)
  on a ~0.5B and a ~1.7B config vs the same architecture in a plain HF + PyTorch bf16 loop
  (bench/bench_pretrain_step.py's two sides): tokens/s, MFU against the measured peak, the
  ratio and peak memory.
- pretrain_stage: the pretraining stage's own loop for a few steps (Megatron's NCCL group of
  one: CPU tensors in NCCL collectives and batches left on the CPU fail here).
- sft_stage: the SFT stage with FSDP2 (a process group of one, bf16 mixed precision).
- rlp_stage, prorl_stage: a few steps of each with FSDP2 as sft_stage (the policy and its
  frozen copy sharded, HF generation on the gathered policy); step time split into
  generation / scoring / update where the stage logs the split.
- sft_stage, rlp_stage, prorl_stage also give the memory plan (slingshot plan --memory) of
  the run beside torch.cuda.max_memory_allocated.
- pytest_gpu: the GPU-marked tests (tests/gpu).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Model sizes (Megatron GPTModelConfig fields) for the Megatron step check.
MEGATRON_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "gpu": {
        "0.5B": dict(layers=24, hidden=1024, ffn=2816, heads=16, groups=8, vocab=32768, seq=2048, batch=8),
        # Qwen3-1.7B: QK-norm, GQA 16/8, head_dim 128, tied embeddings.
        "1.7B": dict(
            layers=28,
            hidden=2048,
            ffn=6144,
            heads=16,
            groups=8,
            vocab=151936,
            seq=2048,
            batch=4,
            arch="qwen3",
            tie=True,
        ),
    },
    "cpu": {
        "1M": dict(
            layers=2,
            hidden=128,
            ffn=352,
            heads=4,
            groups=2,
            vocab=2048,
            seq=128,
            batch=4,
            arch="qwen3",
            tie=True,
        )
    },
}
# The HF model the SFT/RLP/ProRL checks train (the small data recipe's tokenizer).
HF_SIZES = {
    "gpu": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16),
    "cpu": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
}
# Per-check time limits in seconds (GPU run; the CPU run gets 3x: 2 slow cores).
LIMITS = {
    "matmul": 60,
    "data": 120,
    "megatron_step": 240,
    "pretrain_stage": 120,
    "sft_stage": 120,
    "rlp_stage": 120,
    "prorl_stage": 150,
    "pytest_gpu": 180,
}


# --------------------------------------------------------------------------- environment


# reasoning-gym imports pycosat (a C extension without a cp312 wheel) for its logic-puzzle
# family only. If its sdist does not build on the GPU machine, this stands in for it: the
# check uses arithmetic families, and any call says why it fails.
PYCOSAT_STAND_IN = """def _unavailable(*args, **kwargs):
    raise RuntimeError("pycosat did not build on this machine (bench/gpu/check.py stands in for it)")
itersolve = solve = _unavailable
"""


def install_wheels(wheels: Path, target: Path) -> list[str]:
    """pip-install the carried wheels (no index, no dependency resolution) into ``target``,
    then build the carried sdists; return what was installed and how."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        raise SystemExit(f"no wheels in {wheels}: run bench/gpu/fetch_wheels.sh first")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target"]
    subprocess.run([*cmd, str(target), *files], check=True)
    installed = [Path(f).name for f in files]
    for sdist in sorted(wheels.glob("*.tar.gz")):
        built = subprocess.run([*cmd, str(target), "--no-build-isolation", str(sdist)], capture_output=True)
        if built.returncode == 0:
            installed.append(f"{sdist.name} (built here)")
        elif sdist.name.startswith("pycosat"):
            (target / "pycosat.py").write_text(PYCOSAT_STAND_IN)
            installed.append(f"{sdist.name} did not build: stand-in module (logic-puzzle family unusable)")
        else:
            raise SystemExit(f"{sdist.name} did not build:\n{built.stderr.decode()[-2000:]}")
    return installed


def child_env(site: Path | None) -> dict[str, str]:
    paths = [str(REPO / "src"), str(REPO / "tests" / "support"), str(REPO / "tests" / "unit" / "stages")]
    if site is not None:
        paths.append(str(site))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def peak_memory() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


# --------------------------------------------------------------------------- the checks (child side)


def check_matmul(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from slingshot.models.flops import peak_flops

    on_gpu = torch.cuda.is_available()
    n, dtype, dev = (8192, torch.bfloat16, "cuda") if on_gpu else (512, torch.float32, "cpu")
    x, y = (torch.randn(n, n, dtype=dtype, device=dev) for _ in range(2))
    for _ in range(3):
        x @ y
    reps = 50 if on_gpu else 5
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        x @ y
    if on_gpu:
        torch.cuda.synchronize()
    measured = 2 * n**3 * reps / (time.perf_counter() - start)
    datasheet = peak_flops(device_name(), bf16=on_gpu)
    return {
        "dtype": str(dtype),
        "n": n,
        "measured_tflops": measured / 1e12,
        "datasheet_tflops": None if datasheet is None else datasheet / 1e12,
    }


def check_data(a: argparse.Namespace) -> dict[str, Any]:
    from stages import build_small_data

    data = build_small_data(Path(a.root) / "data")
    (Path(a.root) / "data.json").write_text(json.dumps(data))
    return {"tokenizer_vocab": data["metrics"]["vocab_size"]}


def _data(a: argparse.Namespace) -> dict[str, Any]:
    return json.loads((Path(a.root) / "data.json").read_text())


def check_megatron_step(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from slingshot.models.config import GPTModelConfig
    from slingshot.models.flops import train_flops_per_token

    on_gpu = torch.cuda.is_available()
    rows = {}
    for name, size in MEGATRON_SIZES[a.size].items():
        timing = (
            ["--steps=5", "--repeats=2", "--warmup=2"]
            if on_gpu
            else ["--steps=2", "--repeats=1", "--warmup=1"]
        )
        argv = [f"--{k}={v}" for k, v in size.items() if not isinstance(v, bool)] + timing
        argv += [f"--{k}" for k, v in size.items() if v is True]
        argv.append("--bf16" if on_gpu else "--no-bf16")
        sides = {}
        for side in ("mcore", "hf"):
            out = subprocess.run(
                [sys.executable, str(REPO / "bench" / "bench_pretrain_step.py"), *argv, "--only", side],
                capture_output=True,
                text=True,
                env=os.environ,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{name} {side} side failed:\n{out.stderr[-3000:]}")
            sides[side] = json.loads(out.stdout.strip().splitlines()[-1])
        cfg = GPTModelConfig(
            num_layers=size["layers"],
            hidden_size=size["hidden"],
            ffn_hidden_size=size["ffn"],
            num_attention_heads=size["heads"],
            num_query_groups=size["groups"],
            vocab_size=size["vocab"],
            seq_length=size["seq"],
            hf_architecture=size.get("arch", "llama"),
            tie_embeddings=size.get("tie", False),
        )
        flops = train_flops_per_token(cfg)
        rows[name] = {
            "params_m": cfg.num_parameters() / 1e6,
            "mcore_tokens_per_s": sides["mcore"]["tokens_per_s"],
            "hf_tokens_per_s": sides["hf"]["tokens_per_s"],
            "ratio_mcore_over_hf": sides["mcore"]["tokens_per_s"] / sides["hf"]["tokens_per_s"],
            "mcore_mfu_measured_peak": (
                flops * sides["mcore"]["tokens_per_s"] / (a.peak_tflops * 1e12) if a.peak_tflops else None
            ),
            "mcore_peak_memory_gb": (sides["mcore"].get("max_memory_bytes") or 0) / 2**30,
            "hf_peak_memory_gb": (sides["hf"].get("max_memory_bytes") or 0) / 2**30,
        }
    return rows


def _tiny_model(a: argparse.Namespace) -> Path:
    """An untrained HF Qwen3 (falls back to Llama) of this run's size with the data's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from slingshot.data.tokenizer import load_tokenizer
    from slingshot.models.hf import save_model_dir

    out = Path(a.root) / "hf-model"
    if (out / "config.json").is_file():
        return out
    tokenizer = load_tokenizer(_data(a)["outputs"]["tokenizer_dir"])
    size = HF_SIZES[a.size]
    heads = size["num_attention_heads"]
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=len(tokenizer),
        num_key_value_heads=heads // 2,
        head_dim=size["hidden_size"] // heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **size,
    )
    torch.manual_seed(0)
    return save_model_dir(AutoModelForCausalLM.from_config(config), tokenizer, out)


def _record_run(kind: str, a: argparse.Namespace, overrides: dict[str, Any], **ctx_kw: Any) -> dict[str, Any]:
    from pretrain_worker import RecordingTracker
    from stages import make_ctx, pipeline_config

    root = Path(a.root) / kind
    cfg = pipeline_config(root, {"stages": {kind: overrides}})
    tracker = RecordingTracker()
    ctx = make_ctx(root, kind, cfg, {"data": _data(a)}, tracker=tracker, **ctx_kw)
    started = time.perf_counter()
    result = importlib.import_module(f"slingshot.stages.{kind}").run(ctx)
    seconds = time.perf_counter() - started
    planned, measured = _planned_bytes(ctx), peak_memory()
    steps = sorted(tracker.metrics)
    split = {
        key: sum(tracker.metrics[s].get(key, 0.0) for s in steps[1:]) / max(len(steps) - 1, 1)
        for key in ("time_generate_s", "time_score_s", "time_update_s", "step_time_s")
        if any(key in tracker.metrics[s] for s in steps)
    }
    return {
        "steps": len(steps),
        "seconds": seconds,
        "mean_after_first": split,
        "last": tracker.metrics[steps[-1]] if steps else {},
        "tokens": result.tokens,
        "peak_memory_gb": (measured or 0) / 2**30,
        "plan_gb": planned / 2**30,
        "plan_over_measured": planned / measured if measured else None,
    }


def _planned_bytes(ctx: Any) -> float:
    """The memory plan's training bytes per rank for this stage run (slingshot plan --memory)."""
    import torch

    from slingshot import memory_plan

    dims = memory_plan.ModelDims.from_model_dir(str(ctx.init_model))
    on_gpu = torch.cuda.is_available()
    if ctx.kind == "prorl":
        phase = next(p for p in ctx.config.phases if p.name == ctx.phase)
        plan = memory_plan.plan_prorl(ctx.stage, ctx.config, dims, phase.max_response_tokens, on_gpu)
    else:
        plan = getattr(memory_plan, f"plan_{ctx.kind}")(ctx.stage, ctx.config, dims, on_gpu)
    return plan.training_bytes


def check_pretrain_stage(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from pretrain_worker import run_jobs

    big = a.size == "gpu"
    model = dict(
        num_layers=8 if big else 2,
        hidden_size=512 if big else 64,
        ffn_hidden_size=1408 if big else 128,
        num_attention_heads=8 if big else 4,
        num_query_groups=4 if big else 2,
        vocab_size=512,
        seq_length=512 if big else 64,
    )
    steps, batch = (20, 16) if big else (4, 8)
    overrides = {
        "stages": {
            "pretrain": {
                "model": model,
                "total_tokens": steps * batch * model["seq_length"],
                "micro_batch_size": batch // 2,
                "global_batch_size": batch,
                "log_every": 1,
                "precision": "bf16" if torch.cuda.is_available() else "fp32",
                "phases": [
                    {"name": "phase1", "token_fraction": 1.0, "blend": {"general": 0.8, "reasoning": 0.2}}
                ],
            }
        }
    }
    root = Path(a.root) / "pretrain"
    run_jobs(0, str(root), overrides, _data(a), [{"name": "p1", "dir": "p1", "phase": "phase1"}])
    record = json.loads((root / "p1.json").read_text())
    last = record["metrics"][max(record["metrics"], key=int)]
    return {
        "steps": len(record["metrics"]),
        "loss": last["loss"],
        "tokens_per_s": last.get("tokens_per_s"),
        "peak_memory_gb": (peak_memory() or 0) / 2**30,  # Megatron's stage: not in the memory plan
    }


@contextlib.contextmanager
def _process_group_of_one() -> Iterator[Any]:
    """A process group of one rank (FSDP2 needs one): NCCL on the GPU, gloo on CPU."""
    import torch

    from slingshot.dist import CPU_BACKEND, GPU_BACKEND, DistEnv

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    backend = GPU_BACKEND if torch.cuda.is_available() else CPU_BACKEND
    torch.distributed.init_process_group(backend, rank=0, world_size=1)
    try:
        yield DistEnv(0, 1, 0, backend)
    finally:
        torch.distributed.destroy_process_group()


def check_sft_stage(a: argparse.Namespace) -> dict[str, Any]:
    reasoning = _data(a)["outputs"]["corpus_reasoning"]
    overrides = {
        "use_synth": False,
        "extra_datasets": [{"path": reasoning}],
        "data_parallel": "fsdp",
        "epochs": 1,
        "seq_length": 512,
        "micro_batch_size": 8,
        "global_batch_size": 8,  # micro 8 x 1 GPU: no accumulation
        "log_every": 1,
        "eval_every": 1000,
        "eval_fraction": 0.0,
        "optimizer": {"lr": 1e-4, "warmup_steps": 1},
    }
    with _process_group_of_one() as dist:
        record = _record_run("sft", a, overrides, init_model=str(_tiny_model(a)), dist=dist)
    return {**record, "tokens_per_s": record["last"].get("tokens_per_s")}


def check_rlp_stage(a: argparse.Namespace) -> dict[str, Any]:
    overrides = {
        "steps": 4,
        "positions_per_step": 8,
        "group_size": 4,
        "thought_tokens": 64 if a.size == "gpu" else 12,
        "context_tokens": 128 if a.size == "gpu" else 24,
        "min_context_tokens": 4,
        "micro_batch_size": 8,
        "log_every": 1,
        "optimizer": {"lr": 1e-5, "schedule": "constant", "warmup_steps": 0},
        "data_parallel": "fsdp",  # the policy and the EMA teacher sharded (bf16 mixed precision)
    }
    with _process_group_of_one() as dist:
        return _record_run("rlp", a, overrides, init_model=str(_tiny_model(a)), dist=dist)


def check_prorl_stage(a: argparse.Namespace) -> dict[str, Any]:
    # An untrained model solves no task: every group would be all-equal and dynamic sampling
    # would drop it, so no update would run. The benchmark's continuous reward keeps them.
    sys.path.insert(0, str(REPO / "bench"))
    from bench_prorl_step import use_digit_share_reward

    use_digit_share_reward()
    overrides = {
        "binary_reward": False,
        "n_samples": 8,
        "batch_prompts": 8,
        "mini_batch_prompts": 4,
        "temperature": 1.0,
        "kl_coef": 1e-3,
        "max_gen_batches": 1,
        "val_every": 1000,
        "val_prompts": 8,
        "val_samples": 2,
        "log_every": 1,
        "optimizer": {"lr": 1e-5},
        "phases": [{"name": "len", "steps": 4, "max_response_tokens": 256 if a.size == "gpu" else 32}],
        "data_parallel": "fsdp",  # the policy and the reference sharded; generation on the gathered policy
    }
    with _process_group_of_one() as dist:
        return _record_run(
            "prorl", a, overrides, init_model=str(_tiny_model(a)), stage="prorl-len", phase="len", dist=dist
        )


def check_pytest_gpu(a: argparse.Namespace) -> dict[str, Any]:
    report = Path(a.root) / "pytest-gpu.xml"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "gpu",
            "tests/gpu",
            f"--junitxml={report}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    import xml.etree.ElementTree as ET

    suite = ET.parse(report).getroot().find("testsuite") if report.is_file() else None
    counts = (
        {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        if suite is not None
        else {}
    )
    if out.returncode not in (0, 5) or counts.get("failures") or counts.get("errors"):
        raise RuntimeError(f"GPU tests failed:\n{out.stdout[-4000:]}")
    return {**counts, "summary": out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""}


CHECKS = {
    "matmul": check_matmul,
    "data": check_data,
    "megatron_step": check_megatron_step,
    "pretrain_stage": check_pretrain_stage,
    "sft_stage": check_sft_stage,
    "rlp_stage": check_rlp_stage,
    "prorl_stage": check_prorl_stage,
    "pytest_gpu": check_pytest_gpu,
}


# --------------------------------------------------------------------------- the run (parent side)


def run_child(name: str, a: argparse.Namespace, env: dict[str, str], limit_s: float) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--size",
        a.size,
        "--root",
        str(a.root),
        "--peak-tflops",
        str(a.peak_tflops),
    ]
    started = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": limit_s}
    seconds = time.perf_counter() - started
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return {"status": "failed", "seconds": seconds, "error": (out.stderr or out.stdout)[-4000:]}
    return {"status": "ok", "seconds": seconds, "result": json.loads(lines[-1])}


def _figures(name: str, result: dict[str, Any]) -> str:
    """The figures of one check that the table shows (check.json keeps everything)."""

    def num(x: Any, fmt: str = ".3g") -> str:
        return "–" if x is None else format(x, fmt)

    if name == "matmul":
        return f"{num(result['measured_tflops'])} TFLOP/s measured ({result['dtype']}), datasheet {num(result['datasheet_tflops'])}"
    if name == "megatron_step":
        return "; ".join(
            f"{size} ({r['params_m']:.0f}M): mcore {r['mcore_tokens_per_s']:.0f} tok/s, HF loop {r['hf_tokens_per_s']:.0f}, "
            f"ratio {r['ratio_mcore_over_hf']:.2f}x, MFU {num(r['mcore_mfu_measured_peak'], '.1%')}, "
            f"peak {r['mcore_peak_memory_gb']:.1f} GB"
            for size, r in result.items()
        )
    if name == "pytest_gpu":
        return result["summary"]
    if name == "data":
        return f"small data recipe built (tokenizer vocab {result['tokenizer_vocab']:.0f})"
    parts = [f"{result.get('steps')} steps"]
    if result.get("tokens_per_s"):
        parts.append(f"{result['tokens_per_s']:.0f} tok/s")
    parts += [
        f"{k.removeprefix('time_').removesuffix('_s')} {v:.3f} s"
        for k, v in result.get("mean_after_first", {}).items()
    ]
    if "peak_memory_gb" in result:
        parts.append(f"peak {result['peak_memory_gb']:.2f} GB")
    if "plan_gb" in result:
        ratio = num(result["plan_over_measured"], ".2f")
        parts.append(f"plan {result['plan_gb']:.2f} GB (plan/measured {ratio})")
    return ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    head = report["meta"]
    lines = [
        f"# GPU check — {head['device']}, {head['date']}",
        "",
        f"torch {head['torch']}, transformers {head['transformers']}; size `{head['size']}`",
        "",
        "| check | status | s | figures |",
        "|---|---|---|---|",
    ]
    for name, row in report["checks"].items():
        if row["status"] == "ok":
            figures = _figures(name, row["result"])
        else:
            figures = " ".join(row.get("error", "").strip().splitlines()[-1:])[:300]
        lines.append(f"| {name} | {row['status']} | {row['seconds']:.1f} | {figures.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for check.json and check.md")
    p.add_argument("--wheels", type=Path, help="carried wheels to install first (bench/gpu/wheels)")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on CPU (CI keeps the script from rotting)")
    p.add_argument("--only", help="comma-separated checks (data runs first whenever a stage check runs)")
    p.add_argument("--child", choices=sorted(CHECKS), help=argparse.SUPPRESS)
    p.add_argument("--size", default="gpu", help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--peak-tflops", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(CHECKS[a.child](a), default=float))
        return 0

    import torch
    import transformers

    if not a.cpu and not torch.cuda.is_available():
        p.error("no CUDA device: pass --cpu for the CPU rehearsal")
    if a.out is None:
        p.error("--out is required")
    a.size = "cpu" if a.cpu else "gpu"
    a.out.mkdir(parents=True, exist_ok=True)
    a.root = Path(tempfile.mkdtemp(prefix="slingshot-gpu-check-"))
    site = None
    report: dict[str, Any] = {
        "meta": {
            "device": device_name(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "size": a.size,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "checks": {},
    }
    if a.wheels:
        site = a.root / "site"
        report["meta"]["wheels"] = install_wheels(a.wheels, site)
    env = child_env(site)
    names = list(CHECKS) if not a.only else [n for n in CHECKS if n in a.only.split(",") or n == "data"]
    scale = 3.0 if a.cpu else 1.0
    for name in names:
        row = run_child(name, a, env, LIMITS[name] * scale)
        report["checks"][name] = row
        if name == "matmul" and row["status"] == "ok":
            a.peak_tflops = row["result"]["measured_tflops"]
        print(f"{name}: {row['status']} ({row['seconds']:.1f} s)", flush=True)
        (a.out / "check.json").write_text(json.dumps(report, indent=1, default=str))
        (a.out / "check.md").write_text(markdown(report))
    failed = [n for n, r in report["checks"].items() if r["status"] != "ok"]
    print(f"wrote {a.out / 'check.json'} and {a.out / 'check.md'}; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
