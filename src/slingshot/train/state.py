"""The checkpointed state of a training stage: every named part that has a state_dict
(models, optimizers, schedulers, EMA teachers, reference models, data positions,
controllers), plus the RNG streams.

A checkpoint directory written by :class:`TrainState` holds::

    dcp/                 models and optimizers: torch.distributed.checkpoint, written by
                         EVERY rank (its own FSDP2 shards; replicated tensors once, DCP
                         deduplicates them across ranks), read back at any world size
    parts.pt             the other parts (schedulers, counters, streams, controllers), rank 0
    rng-rank00000.pt     each rank's RNG streams (python, numpy, torch, CUDA)

Nothing is gathered to one rank: each rank writes its shard, so a save costs the time
to write 1/world of the state instead of gathering and writing all of it on rank 0. The
tensors are stored by parameter name (optimizer state too), so a checkpoint written at
one world size resumes at another (2 ranks -> 1, 1 -> 2, FSDP2 <-> replicated). Stages
pass ``all_ranks_write=True`` to :func:`slingshot.loop.resumable_steps`: the checkpoint
is published (COMPLETE, rename) only after every rank's files are written.

On a resume at a world size the checkpoint did not have, a rank with no RNG file of its
own takes rank 0's streams (every stage seeds its sampling from (seed, step, rank), so
nothing the data schedule depends on comes from those streams).

The single-file format of earlier versions (``train_state.pt``, a torch.save of full
state dicts on rank 0) is refused with an error naming the directory: its optimizer
state was keyed by parameter position, not name, and cannot be resharded.
Megatron's sharded checkpoints use their own format (``slingshot.models.megatron_checkpoint``)
through the same checkpoint manager.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch

from slingshot import dist
from slingshot.checkpoint import load_torch, rng_state, save_torch, set_rng_state

TENSOR_DIR = "dcp"
PARTS_FILE = "parts.pt"
LEGACY_FILE = "train_state.pt"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank:05d}.pt"


class HasState(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class ShardedState(Protocol):
    """A part whose tensors go through DCP: state as it lives on this rank (shards under FSDP2)."""

    def sharded_state_dict(self) -> dict[str, Any]: ...

    def load_sharded_state_dict(self, state: dict[str, Any]) -> None: ...


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Flat optimizer keys ("state.<fqn>.exp_avg", "param_groups.<fqn>.lr"): by name, so a
    # checkpoint reshards, and only tensors and scalars, which DCP stores as they are.
    return StateDictOptions(flatten_optimizer_state_dict=True)


class ModelOptimizerState:
    """A model and its optimizer as one sharded part (one process, replicated ranks or FSDP2)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def sharded_state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=_options())
        return {"model": model_sd, "optimizer": optim_sd}

    def load_sharded_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=_options(),
        )


class _Module:
    """A model listed as its own part (a policy, an EMA teacher, a reference model)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def sharded_state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model, options=_options())

    def load_sharded_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, state, options=_options())


class _OptimizerOf:
    """An optimizer listed as its own part: its state by the names of ``model``'s parameters."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def sharded_state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=_options())

    def load_sharded_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=_options())


def _owner(optimizer: torch.optim.Optimizer, modules: dict[str, torch.nn.Module]) -> torch.nn.Module:
    """The listed module holding ``optimizer``'s parameters (their names key its state)."""
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in modules.values():
        if wanted <= {id(p) for p in module.parameters()}:
            return module
    raise ValueError(
        "an optimizer part's parameters belong to no model part of the TrainState: list the model too"
    )


def _no_dist() -> bool:
    return not dist.is_initialized()


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every single-process save/load; one process is a supported case here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


class TrainState:
    """``TrainState(model=m, optimizer=o, scheduler=s, ema=e, data=d)``: save/load them together.

    Every rank calls ``save`` and ``load`` (DCP is collective), into the same directory.
    Parts load in the order given (list an engine part after the policy it pushes).
    ``is_main``: whether this rank writes ``parts.pt`` (the replicated small parts); by
    default rank 0 of the process group (one writer, never every rank into one file).
    """

    def __init__(self, is_main: bool | None = None, **parts: Any):
        self.is_main = is_main
        self.parts = parts
        modules = {n: p for n, p in parts.items() if isinstance(p, torch.nn.Module)}
        self.sharded: dict[str, ShardedState] = {}
        for name, part in parts.items():
            if isinstance(part, torch.nn.Module):
                self.sharded[name] = _Module(part)
            elif isinstance(part, torch.optim.Optimizer):
                self.sharded[name] = _OptimizerOf(_owner(part, modules), part)
            elif hasattr(part, "sharded_state_dict"):
                self.sharded[name] = part

    def _tensors(self) -> dict[str, Any]:
        return {name: part.sharded_state_dict() for name, part in self.sharded.items()}

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp

        directory = Path(directory)
        with _single_process_quiet():
            dcp.save(self._tensors(), checkpoint_id=str(directory / TENSOR_DIR), no_dist=_no_dist())
        writes_parts = dist.rank() == 0 if self.is_main is None else self.is_main
        if writes_parts:
            rest = {n: p.state_dict() for n, p in self.parts.items() if n not in self.sharded}
            save_torch(directory / PARTS_FILE, rest)
        save_torch(directory / rng_file(dist.rank()), rng_state())

    def load(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp

        directory = Path(directory)
        if not (directory / TENSOR_DIR).is_dir():
            if (directory / LEGACY_FILE).is_file():
                raise RuntimeError(
                    f"checkpoint {directory} is in the old single-file format ({LEGACY_FILE}), which this "
                    "version cannot reshard: finish the run with the version that wrote it, or move the "
                    "stage's checkpoints/ directory away to restart the stage"
                )
            raise FileNotFoundError(f"checkpoint {directory} has no {TENSOR_DIR}/ directory")
        rest = load_torch(directory / PARTS_FILE)
        missing = sorted(set(self.parts) - set(self.sharded) - set(rest))
        if missing:
            raise KeyError(f"checkpoint {directory} lacks {missing}: it was written by another stage version")
        tensors = self._tensors()  # the templates DCP loads into, in place (and reshards)
        with _single_process_quiet():
            dcp.load(tensors, checkpoint_id=str(directory / TENSOR_DIR), no_dist=_no_dist())
        for name, part in self.parts.items():
            if name in self.sharded:
                self.sharded[name].load_sharded_state_dict(tensors[name])
            else:
                part.load_state_dict(rest[name])
        own = directory / rng_file(dist.rank())
        set_rng_state(load_torch(own if own.is_file() else directory / rng_file(0)))


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """Every part of a checkpoint as full tensors and plain values, by part name, read in one
    process (for inspection and tests; stages resume through :meth:`TrainState.load`).
    Optimizer parts come flat: ``{"state.<param>.exp_avg": tensor, "param_groups.<param>.lr": ...}``."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as tmp, _single_process_quiet():
        dcp_to_torch_save(directory / TENSOR_DIR, Path(tmp) / "full.pt")
        tensors = load_torch(Path(tmp) / "full.pt")
    return {**load_torch(directory / PARTS_FILE), **tensors}


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
