"""Pure math of the recipe (SPEC.md): tensors in, tensors out — no I/O, no stage knowledge.

Modules: ``rlp`` (information-gain reward, leave-one-out advantages, EMA teacher),
``policy_loss`` (clipped policy loss shared by RLP and ProRL), ``grpo`` (GRPO/Dr.GRPO
advantages, dynamic sampling), ``kl`` (k1/k2/k3), ``entropy`` (token entropy, forking-token
mask, ε_high controller), ``gvendi`` (Rademacher projection, G-Vendi), ``kmeans``
(spherical k-means), ``metrics`` (pass@k, majority vote).
"""

from slingshot.algorithms.entropy import EntropyController, token_entropy, top_entropy_mask
from slingshot.algorithms.grpo import dynamic_sampling_mask, grpo_advantages
from slingshot.algorithms.gvendi import g_vendi, rademacher_project, rademacher_rows
from slingshot.algorithms.kl import KL_KINDS, kl_penalty
from slingshot.algorithms.kmeans import nearest_centroid, spherical_kmeans
from slingshot.algorithms.metrics import majority_vote, pass_at_k, pass_at_k_array
from slingshot.algorithms.policy_loss import AGGREGATIONS, PolicyLossOutput, clipped_policy_loss
from slingshot.algorithms.rlp import (
    ema_update_,
    information_gain_reward,
    parameter_distance,
    rlp_group_advantages,
)

__all__ = [
    "AGGREGATIONS",
    "KL_KINDS",
    "EntropyController",
    "PolicyLossOutput",
    "clipped_policy_loss",
    "dynamic_sampling_mask",
    "ema_update_",
    "g_vendi",
    "grpo_advantages",
    "information_gain_reward",
    "kl_penalty",
    "majority_vote",
    "nearest_centroid",
    "parameter_distance",
    "pass_at_k",
    "pass_at_k_array",
    "rademacher_project",
    "rademacher_rows",
    "rlp_group_advantages",
    "spherical_kmeans",
    "token_entropy",
    "top_entropy_mask",
]
