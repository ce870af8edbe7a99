"""Importing the user's own code named in a setting (``--model module:callable``,
``--method module:name``): from the current folder, with an error that says how to make it importable."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Type

__all__ = ["import_user_module"]


def import_user_module(module_name: str, what: str, error: Type[Exception] = ValueError,
                       wrap_all: bool = False) -> ModuleType:
    """``module_name`` imported; ``error("cannot import <what>: ...")`` when it cannot be found (how
    to make it importable) or its import raises ImportError (any exception with ``wrap_all``)."""
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name and module_name.startswith(e.name):
            raise error(f"cannot import {what}: no module {e.name!r} here; run from the folder that holds "
                        f"{e.name.replace('.', '/')}.py, or add that folder to PYTHONPATH") from e
        raise error(f"cannot import {what}: importing {module_name} failed ({e})") from e
    except Exception as e:
        if not wrap_all:
            raise
        raise error(f"cannot import {what}: importing {module_name} failed ({type(e).__name__}: {e})") from e
