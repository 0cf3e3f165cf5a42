"""LatencyHistogram selector: the native implementation when built, else the pure twin.

``OLLAMAMAX_NO_EXTENSIONS=1`` selects the pure-Python one (see ``ollamamax._compat``).  Both have the
same bucket layout and byte-identical ``to_bytes``, so their data interoperate
(``from_bytes`` and ``merge`` accept either).  Specification: ``_hist_py``.
"""

from __future__ import annotations

from types import ModuleType

from .._compat import load_native
from . import _hist_py

__all__ = ["LatencyHistogram"]

PUBLIC = ("LatencyHistogram",)

_c: ModuleType | None = load_native("structures._hist_c")

IMPLEMENTATIONS: dict[str, ModuleType | None] = {"c": _c, "py": _hist_py}

LatencyHistogram = (_c if _c is not None else _hist_py).LatencyHistogram
