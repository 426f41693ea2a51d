"""Generation backends behind one interface: HF generate and vLLM (both on CPU and GPU).

``base`` holds the interface (``Rollout``, ``RolloutBackend``); each backend module
imports only ``base``, and ``make_rollout`` here picks one, so no module imports back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slingshot.rollout.base import EngineWeights, Rollout, RolloutBackend

if TYPE_CHECKING:
    import torch

    from slingshot.config import RolloutConfig

__all__ = ["EngineWeights", "Rollout", "RolloutBackend", "make_rollout"]


def make_rollout(
    cfg: RolloutConfig,
    model: torch.nn.Module,
    tokenizer: object,
    stop_token_ids: list[int],
    stage: str = "rollout",
) -> RolloutBackend:
    """The backend ``cfg.backend`` names, generating with ``model`` until a stop token; ``stage``
    names the stage in a failed weight push."""
    if cfg.backend == "vllm" and cfg.async_steps:
        from slingshot.rollout.process import ProcessRollout  # the engine in a process of its own

        return ProcessRollout(model, stop_token_ids, cfg, stage=stage)
    if cfg.backend == "vllm":
        from slingshot.rollout.vllm import VLLMRollout  # imports vllm: only when it is chosen

        return VLLMRollout(model, stop_token_ids, cfg, stage=stage)
    from slingshot.rollout.hf import HFRollout  # imports torch: only when a backend is made

    return HFRollout(model, pad_token_id=tokenizer.pad_token_id, stop_token_ids=stop_token_ids)
