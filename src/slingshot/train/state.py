"""The checkpointed state of a training stage: every named part that has a state_dict
(models, optimizers, schedulers, EMA teachers, reference models, data positions,
controllers), plus the RNG streams. One file per checkpoint for single-process,
replicated (DDP) and FSDP2 training (a model and its optimizer gathered to full tensors,
:class:`FullModelOptimizerState`); Megatron's sharded checkpoints use their own format
(``slingshot.models.megatron_checkpoint``) through the same checkpoint manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from slingshot.checkpoint import load_torch, rng_state, save_torch, set_rng_state

STATE_FILE = "train_state.pt"


class HasState(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class TrainState:
    """``TrainState(model=m, optimizer=o, scheduler=s, ema=e, data=d)``: save/load them together.

    ``is_main``: whether this rank writes the file. Every rank calls ``save`` (gathering a
    full state under FSDP is collective); only the main rank writes, so the checkpoint
    does not depend on the world size.
    """

    def __init__(self, is_main: bool = True, **parts: HasState):
        self.is_main = is_main
        self.parts = parts
        self.step = 0

    def save(self, directory: Path) -> None:
        payload = {name: part.state_dict() for name, part in self.parts.items()}
        if self.is_main:
            payload["_rng"] = rng_state()
            save_torch(directory / STATE_FILE, payload)

    def load(self, directory: Path) -> None:
        payload = load_torch(directory / STATE_FILE)
        missing = set(self.parts) - set(payload)
        if missing:
            raise KeyError(
                f"checkpoint {directory} lacks {sorted(missing)}: it was written by another stage version"
            )
        for name, part in self.parts.items():
            part.load_state_dict(payload[name])
        set_rng_state(payload["_rng"])


class Counter:
    """A plain value with a state_dict, e.g. a data position or a best score."""

    def __init__(self, **values: Any):
        self.values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = dict(state)


class ModelOptimizerState:
    """Model + optimizer state dicts as they are (one process or replicated ranks), as one part."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class FullModelOptimizerState:
    """Model + optimizer state as full (unsharded, CPU) tensors: collective under FSDP2, so
    the checkpoint is the same whatever the world size."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=options)
        return {"model": model_sd, "optimizer": optim_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
