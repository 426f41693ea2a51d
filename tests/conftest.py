"""Shared test setup: keep torch to one thread per process so tests fit 2 CPU cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


import pytest  # noqa: E402


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


def pytest_collection_modifyitems(config, items):
    """Slow and Slurm tests first (under pytest-xdist the long ones then start early instead of leaving
    one worker busy at the end); GPU tests (``-m gpu``) run only where CUDA exists, elsewhere
    they are skipped, named."""
    items.sort(key=lambda item: not ("slow" in item.keywords or "slurm" in item.keywords))  # stable sort
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
