"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every output and checkpoint in slingshot is written through these helpers
(write to a temp file in the same directory, fsync, rename, fsync the directory).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskFullError(OSError):
    """A write failed because the filesystem holding ``path`` is full (or over quota)."""

    def __init__(self, path: str | os.PathLike[str], space: str):
        self.space = space  # "N of M bytes free"
        super().__init__(errno.ENOSPC, f"no space left on device ({space}) while writing {path}")


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NOT_ERRORS = (KeyboardInterrupt, SystemExit, GeneratorExit)  # never a write failure


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def disk_full(error: BaseException, path: str | os.PathLike[str]) -> DiskFullError | None:
    """A DiskFullError naming ``path`` and its filesystem's free space if ``error`` came from
    a full disk, else None. Writers wrap the errno (ENOSPC, EDQUOT) in their own exceptions
    (torch.save raises a RuntimeError without one), so a failure while the filesystem has
    less than 1 MiB free counts too. Call it before cleaning up what the failed write left."""
    if isinstance(error, DiskFullError):
        return error
    by_errno = any(isinstance(e, OSError) and e.errno in _FULL_ERRNOS for e in _chain(error))
    try:
        usage = shutil.disk_usage(path if os.path.exists(path) else os.path.dirname(os.fspath(path)) or ".")
    except OSError:
        usage = None
    if not by_errno and (usage is None or usage.free >= 1 << 20):
        return None
    return DiskFullError(path, f"{usage.free} of {usage.total} bytes free" if usage else "free space unknown")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temp file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as error:
        full = None if isinstance(error, _NOT_ERRORS) else disk_full(error, target)
        tmp.unlink(missing_ok=True)
        if full is not None and full is not error:
            raise full from error
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success fsync its files and directories and
    swap it in whole (replacing an older ``path``). On an exception the temp directory is
    removed and ``path`` is left as it was; a full disk raises :class:`DiskFullError` naming
    ``path``. For outputs that are directories: HF models, tokenizers, datasets, checkpoints."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        for entry in [tmp, *tmp.rglob("*")]:
            if entry.is_dir():  # the names inside it (a nested shard directory too)
                fsync_dir(entry)
            elif entry.is_file():
                with open(entry, "rb") as handle:
                    os.fsync(handle.fileno())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as error:
        full = None if isinstance(error, _NOT_ERRORS) else disk_full(error, target)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None and full is not error:
            raise full from error
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Digest of a JSON-able object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and make it readable by its owner only (mode 0700):
    work dirs hold checkpoints, job scripts and run ids."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory
