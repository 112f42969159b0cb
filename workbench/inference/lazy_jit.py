"""Compile a kernel with numba on its first call, so importing its module does not load numba.

numba (and LLVM under it) costs about a second and ~90 MB to import; the daemon's request
process, the dashboard and the generator import the window store and the forecast type but
some never call their kernels.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.Lock()


def lazy_njit(func: Callable[..., Any]) -> Callable[..., Any]:
    """Return ``func`` compiled by ``numba.njit(nogil=True, cache=True)`` when first called."""
    compiled: list[Callable[..., Any]] = []

    @functools.wraps(func)
    def call(*args: Any) -> Any:
        if not compiled:
            with _LOCK:
                if not compiled:
                    import numba

                    compiled.append(numba.njit(nogil=True, cache=True)(func))
        return compiled[0](*args)

    return call
