"""Shared test setup: keep torch to one thread per process so tests fit 2 CPU cores."""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


import pytest  # noqa: E402

TESTS_DIR = Path(__file__).parent
SLURM_DIR = TESTS_DIR / "slurm"  # its conftest groups its tests (one cluster)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """The data stage's real output for a small recipe, built once per test session."""
    from stages import build_small_data

    return build_small_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def pretrain_baseline(tmp_path_factory):
    """The real data -> pretrain pipeline of tests/support/real_pipeline.py run once,
    uninterrupted: the losses the fault-injection tests must reproduce."""
    from real_pipeline import baseline_losses

    return baseline_losses(tmp_path_factory.mktemp("pretrain-baseline"))


def _start_order(item: pytest.Item) -> int:
    """The tiny recipe end to end first (the longest test, group "recipe"), then the Slurm tests
    (the other worker: one cluster, one test at a time), then the slow tests, then the rest. Under pytest-xdist the long ones then start early instead of
    leaving one worker busy at the end (`make test` keeps this order: --no-loadscope-reorder)."""
    group = item.get_closest_marker("xdist_group")
    if group is not None and group.args == ("recipe",):
        return 0
    if item.path.is_relative_to(SLURM_DIR):
        return 1
    return 2 if "slow" in item.keywords else 3


def _group_by_module(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``) each module's tests run on one worker, so a
    module-scoped fixture (a trained model, spawned Megatron ranks, an engine) is built once,
    not once per worker. Tests that name their group keep it (tests/slurm: one cluster)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None and not item.path.is_relative_to(SLURM_DIR):
            item.add_marker(pytest.mark.xdist_group(str(item.path.relative_to(TESTS_DIR))))


# tryfirst: pytest-xdist reads the xdist_group markers in its own modifyitems hook.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Each module on one worker, the longest tests first (``_start_order``); GPU tests
    (``-m gpu``) run only where CUDA exists, elsewhere they are skipped, named."""
    _group_by_module(items)
    items.sort(key=_start_order)  # stable sort
    _require_vllm_in_ci(items)
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_items:
            item.add_marker(skip)


def _require_vllm_in_ci(items) -> None:
    """In CI (``CI`` set, as .ci/run does) the vLLM tests must run: a missing vLLM fails the
    session instead of skipping them. Elsewhere they skip where vLLM is not installed."""
    import importlib.util

    missing = os.environ.get("CI") and importlib.util.find_spec("vllm") is None
    if missing and any("vllm" in item.keywords for item in items):
        raise pytest.UsageError("CI runs the vLLM tests but vllm is not installed: run `make install-vllm`")
