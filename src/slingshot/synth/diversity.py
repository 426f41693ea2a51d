"""How diverse a set of gradient features is (G-Vendi), and the method's claim measured.

:func:`baseline_comparison` compares the candidates the diversity filter selected with
random same-size subsets of every quality-passed candidate (filtered or not): if the
filter works, the selected set's G-Vendi beats the random subsets'. :func:`random_subset`
draws one such subset as records, the control set an SFT run trains on to test the claim
downstream (``stages.sft.synth_dataset: random_subset``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from slingshot.algorithms.gvendi import g_vendi
from slingshot.data.tasks import derive_seed
from slingshot.synth.state import SynthState

BASELINE_DRAWS = 20  # random subsets averaged for the baseline G-Vendi


def pool_gvendi(features: Tensor) -> float:
    """G-Vendi of the rows of ``features``; 0 for an empty set."""
    return g_vendi(features) if features.shape[0] else 0.0


def baseline_comparison(state: SynthState, seed: int) -> dict[str, float]:
    """G-Vendi of the selected candidates vs random same-size subsets of all unfiltered ones."""
    selected = state.cand_features[state.cand_kept] if state.cand_kept.numel() else torch.zeros(0, 0)
    n = selected.shape[0]
    if n == 0:
        return {"selected_size": 0.0}
    gen = torch.Generator().manual_seed(derive_seed(seed, "synth-baseline"))
    draws = [
        g_vendi(state.cand_features[torch.randperm(state.cand_features.shape[0], generator=gen)[:n]])
        for _ in range(BASELINE_DRAWS)
    ]
    chosen = g_vendi(selected)
    return {
        "selected_size": float(n),
        "candidates": float(state.cand_features.shape[0]),
        "gvendi_selected": chosen,
        "gvendi_random_subset": draws[0],
        "gvendi_random_subset_mean": float(np.mean(draws)),
        "gvendi_random_subset_std": float(np.std(draws)),
        "gvendi_selected_beats_random_frac": float(np.mean([chosen > d for d in draws])),
        "gvendi_selected_qinf": g_vendi(selected, q=float("inf")),
    }


def random_subset(state: SynthState, seed: int) -> tuple[list[dict], Tensor] | None:
    """The seed pool plus a seeded random subset of all quality-passed candidates, as many as
    the diversity filter admitted (records and features, candidates in generation order);
    None when the candidates were not recorded (a run resumed from an older checkpoint)."""
    n_candidates = state.cand_features.shape[0]
    if len(state.candidates) != n_candidates:
        return None
    seeds = [i for i, record in enumerate(state.pool) if record["round"] == 0]
    n = int(state.cand_kept.sum())
    gen = torch.Generator().manual_seed(derive_seed(seed, "synth-random-subset"))
    chosen = sorted(torch.randperm(n_candidates, generator=gen)[:n].tolist())
    records = [state.pool[i] for i in seeds] + [state.candidates[i] for i in chosen]
    parts = [state.features[seeds]] + ([state.cand_features[chosen]] if chosen else [])
    return records, torch.cat(parts)
