"""The one switch between native and pure-Python implementations.

``OLLAMAMAX_NO_EXTENSIONS=1`` (any non-empty value other than ``0``) selects the
pure-Python twins at import time.  Otherwise each selector module
(``structures.ring``, ``.pool``, ``.lfu``, ``.hist``) asks :func:`load_native` for its
compiled module; when one is missing the import warns once and falls back to pure Python.
This module is read by the selectors only; nothing else decides which implementation runs.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

__all__ = ["NO_EXTENSIONS", "load_native"]

NO_EXTENSIONS: bool = os.environ.get("OLLAMAMAX_NO_EXTENSIONS", "") not in ("", "0")

_warned = False


def load_native(name: str) -> ModuleType | None:
    """Return ``ollamamax.<name>`` (a compiled module, e.g. ``structures._ring_c``), or
    ``None`` for pure Python."""
    global _warned
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module(f"ollamamax.{name}")
    except ImportError as exc:
        if not _warned:
            _warned = True
            warnings.warn(
                f"ollamamax: native extension {name!r} could not be imported ({exc}); "
                "falling back to the pure-Python implementations. "
                "Set OLLAMAMAX_NO_EXTENSIONS=1 to select them explicitly.",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
