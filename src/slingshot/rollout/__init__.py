"""Generation backends behind one interface: HF generate (CPU and GPU) and vLLM (GPU)."""

from slingshot.rollout.base import Rollout, RolloutBackend, make_rollout

__all__ = ["Rollout", "RolloutBackend", "make_rollout"]
