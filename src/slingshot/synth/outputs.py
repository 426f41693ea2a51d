"""What synthesis leaves behind: the final pool as an HF dataset and a cluster-size plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slingshot.io import atomic_dir, atomic_path


def save_dataset(records: list[dict[str, Any]], clusters: list[int], out: Path) -> Path:
    """save_to_disk into a temp dir beside ``out``, then swap it in whole."""
    from datasets import Dataset

    table = {
        "problem": [r["problem"] for r in records],
        "solution": [r["solution"] for r in records],
        "answer": [r["answer"] for r in records],
        "task": [r["task"] for r in records],
        "round": [int(r["round"]) for r in records],
        "cluster": [int(c) for c in clusters],
    }
    with atomic_dir(out) as tmp:
        Dataset.from_dict(table).save_to_disk(str(tmp))
    return out


def plot_clusters(records: list[dict[str, Any]], clusters: list[int], k: int, path: Path) -> Path:
    """Members per cluster of the final pool (seed vs synthesized), clusters sorted by seed count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed_counts = np.bincount(
        [c for r, c in zip(records, clusters, strict=True) if r["round"] == 0], minlength=k
    )
    synth_counts = np.bincount(
        [c for r, c in zip(records, clusters, strict=True) if r["round"] > 0], minlength=k
    )
    order = np.argsort(seed_counts, kind="stable")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(k)
    ax.bar(x, seed_counts[order], label="seed pool", color="#888888")
    ax.bar(x, synth_counts[order], bottom=seed_counts[order], label="synthesized", color="#d95f02")
    ax.set_xlabel("cluster (sorted by seed members)")
    ax.set_ylabel("members")
    ax.set_title(f"Final pool: {len(records)} samples in {k} gradient-feature clusters")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
