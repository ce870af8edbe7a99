"""Crash-safe file writes: temporary file, fsync, rename. A crash never leaves a torn file."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Union

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_save", "keep_previous"]

PathLike = Union[str, Path]


def atomic_write_bytes(data: bytes, path: PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep_previous(path: PathLike, previous: PathLike) -> None:
    """Make ``previous`` the current content of ``path`` (a hard link, or a copy where links are not
    possible), atomically: before ``path`` is overwritten, its last good version stays available."""
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return
    tmp = previous.with_name(previous.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(path, tmp)
    except OSError:
        atomic_write_bytes(path.read_bytes(), previous)
        return
    os.replace(tmp, previous)
    _fsync_dir(previous.parent)


def atomic_write_text(text: str, path: PathLike) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` made atomic."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)
