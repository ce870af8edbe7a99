"""Crash-safe file writes: temporary file, fsync, rename. A crash never leaves a torn file."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Union

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_save"]

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
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(text: str, path: PathLike) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` made atomic."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)
