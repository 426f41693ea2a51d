"""Measured peak memory on any device, CPU included: the bytes of live tensor storage.

``torch.cuda.max_memory_allocated`` exists only on GPUs; the memory plan
(:mod:`slingshot.memory_plan`) is checked against CPU runs, so this counts storage itself:
a ``TorchDispatchMode`` sees the output of every operator (forward, backward and
optimizer ops alike), records each new storage's size once, and a weak-reference
finaliser takes it off when the storage is freed. Tensors that exist before the block
(weights, gradients) count when passed to :meth:`LiveBytes.track`.

    with LiveBytes() as probe:
        probe.track(model.parameters())
        loss = model(ids).logits.sum(); loss.backward()
    probe.peak  # bytes

It does not see allocator caching or fragmentation (a GPU's reserved memory is higher).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Current and peak bytes of the tensor storages created (or tracked) inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, int] = {}  # storage key -> bytes

    def _add(self, tensor: torch.Tensor) -> None:
        if isinstance(tensor, torch.nn.Parameter | torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or key in self._live:
                return
            self._live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that already exist (weights, gradients, optimizer state)."""
        for tensor in tensors:
            self._add(tensor.detach())

    def reset_peak(self) -> None:
        self.peak = self.current

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        return out
