"""Float32 math for the engine's compiled (numba) kernels, written so that the compiler vectorises it.

numba calls the C library for ``exp``, one element at a time; these functions use only
arithmetic, ``min``/``max`` and a bit cast, so a loop over them compiles to AVX2 code. Their
errors are a few float32 ulps (``tanh`` is a rational minimax approximation, ``exp`` a
Cody–Waite reduction with a degree-6 polynomial), the size of the rounding differences the
engine's equivalence test already bounds.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

# Every fast-math flag but nnan/ninf: with those, a NaN input could turn into a finite value.
FASTMATH = {"contract", "reassoc", "arcp", "nsz", "afn"}
JIT: dict[str, Any] = {"fastmath": FASTMATH, "error_model": "numpy", "cache": True}

_F = np.float32
Array = np.ndarray
Params = tuple[Any, ...]  # a numba tuple of arrays and scalars
Scalar = Any  # a float32 in compiled code
_TANH_CLAMP = _F(7.90531110763549805)  # float32 tanh is ±1 (to half an ulp) beyond this
_ALPHA = tuple(
    _F(a)
    for a in (
        -2.76076847742355e-16,
        2.00018790482477e-13,
        -8.60467152213735e-11,
        5.12229709037114e-08,
        1.48572235717979e-05,
        6.37261928875436e-04,
        4.89352455891786e-03,
    )
)
_BETA = tuple(_F(b) for b in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))


@numba.njit(inline="always", **JIT)
def _horner(x: Scalar, coefficients: tuple[Scalar, ...]) -> Scalar:
    """The polynomial with ``coefficients`` (highest degree first) at ``x``."""
    p = coefficients[0]
    for c in coefficients[1:]:
        p = p * x + c
    return p


@numba.njit(inline="always", **JIT)
def tanh(x: Scalar) -> Scalar:
    """A rational minimax ``tanh`` for float32 (odd degree 13 over even degree 6)."""
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    return x * _horner(x2, _ALPHA) / _horner(x2, _BETA)


@numba.njit(inline="always", **JIT)
def sigmoid(x: Scalar) -> Scalar:
    """``1 / (1 + exp(-x))`` as ``(1 + tanh(x/2)) / 2``."""
    return _F(0.5) + _F(0.5) * tanh(_F(0.5) * x)


@numba.njit(inline="always", **JIT)
def elu(x: Scalar) -> Scalar:
    """``max(x, expm1(min(x, 0)))`` with ``expm1(y) = 2·tanh(y/2) / (1 - tanh(y/2))``."""
    t = tanh(_F(0.5) * min(x, _F(0.0)))
    return max(x, _F(2.0) * t / (_F(1.0) - t))


def _bitcast_to_float32(typingctx: Any, bits: Any) -> Any:
    """Reinterpret an int32's bits as a float32 (``(n + 127) << 23`` is ``2^n``)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


_float32_bits: Any = intrinsic(_bitcast_to_float32)


_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693145751953125)  # ln 2 to 16 bits: n · _LN2_HI is exact
_LN2_LO = _F(math.log(2.0) - 0.693145751953125)
_EXP_MIN, _EXP_MAX = _F(-87.33), _F(88.3)  # e^x and 2^n are normal float32s in between
_TAYLOR = tuple(_F(1.0 / c) for c in (720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0))


@numba.njit(inline="always", **JIT)
def exp(x: Scalar) -> Scalar:
    """``e^x`` for float32: ``2^n · e^f`` with ``|f| <= ln2/2``, ``e^f`` by its degree-6 Taylor polynomial."""
    x = min(max(x, _EXP_MIN), _EXP_MAX)
    n = np.floor(x * _LOG2E + _F(0.5))
    f = (x - n * _LN2_HI) - n * _LN2_LO
    return _horner(f, _TAYLOR) * _float32_bits((np.int32(n) + np.int32(127)) << np.int32(23))  # 2^n
