"""Input validation shared by the public wrappers.

Structure (shape, ndim, dtype) is checked in Python at trace time. Values are checked
eagerly with a clear ``ValueError`` when the array is concrete, and with
``eqx.error_if`` when it is traced (inside a caller's ``jit`` or ``vmap``), so the
check is never dead code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

ArrayIn = ArrayLike | Sequence[Any]
"""Array input: a JAX or NumPy array, a Python number, or nested sequences of numbers."""

SIMPLEX_ATOL = 1e-4
"""Tolerance on a probability row's sum: rows must sum to 1 within this."""


def is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _first_bad(bad: Any) -> str:
    bad = np.asarray(bad)
    if bad.ndim == 0:
        return "the value"
    idx = np.argwhere(bad)
    count = len(idx)
    where = tuple(int(i) for i in idx[0])
    where_s = where[0] if len(where) == 1 else where
    return f"{count} bad entr{'y' if count == 1 else 'ies'}, first at index {where_s}"


def check_values(x: Array, bad: Array, message: str) -> Array:
    """Raise if any of ``bad`` is true: ``ValueError`` eagerly, ``eqx.error_if`` when traced.

    Returns ``x`` (with the runtime check attached when traced), which callers must use.
    """
    if is_traced(x) or is_traced(bad):
        return eqx.error_if(x, jnp.any(bad), message)
    bad_np = np.asarray(bad)
    if bad_np.any():
        raise ValueError(f"{message} ({_first_bad(bad_np)})")
    return x


def as_float_array(name: str, x: Any, *, ndim: int | tuple[int, ...]) -> Array:
    """Convert to a floating array of the default float dtype and check ``ndim``."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be an array of numbers; got {type(x).__name__}")
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"`{name}` must be an array of numbers; got {type(x).__name__}") from e
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        want = " or ".join(str(d) for d in ndims)
        raise ValueError(f"`{name}` must have {want} dimension(s); got shape {arr.shape}")
    if not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
        or arr.dtype == jnp.bool_
    ):
        raise TypeError(f"`{name}` must hold real numbers; got dtype {arr.dtype}")
    return arr.astype(jnp.result_type(float))


def as_int_array(name: str, x: Any, *, ndim: int | tuple[int, ...]) -> Array:
    """Convert to int32, refusing floats that are not whole numbers."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be an array of integers; got {type(x).__name__}")
    arr = jnp.asarray(x)
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        want = " or ".join(str(d) for d in ndims)
        raise ValueError(f"`{name}` must have {want} dimension(s); got shape {arr.shape}")
    if jnp.issubdtype(arr.dtype, jnp.floating):
        if not is_traced(arr):
            a = np.asarray(arr)
            bad = ~np.isfinite(a) | (a != np.round(a))
            if bad.any():
                first = a[tuple(np.argwhere(np.atleast_1d(bad))[0])] if a.ndim else a
                raise ValueError(
                    f"`{name}` must hold whole numbers; got {float(first):g} ({_first_bad(bad)})"
                )
        else:
            arr = eqx.error_if(
                arr, jnp.any(arr != jnp.round(arr)), f"`{name}` must hold whole numbers"
            )
    elif not (jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_):
        raise TypeError(f"`{name}` must hold integers; got dtype {arr.dtype}")
    return arr.astype(jnp.int32)


def check_simplex_rows(name: str, p: Array, *, atol: float = SIMPLEX_ATOL) -> Array:
    """Check that every row of ``p`` is a probability vector; return rows renormalised."""
    p = check_values(p, ~jnp.isfinite(p), f"`{name}` must be finite; got NaN or inf")
    p = check_values(p, p < 0, f"`{name}` must be non-negative; got a negative probability")
    total = jnp.sum(p, axis=-1)
    off = jnp.abs(total - 1) > atol
    message = f"`{name}` rows must sum to 1 (within {atol:g})"
    if not is_traced(off):
        off_np = np.asarray(off)
        if off_np.any():
            row = int(np.argmax(off_np))
            raise ValueError(
                f"{message}; got row {row} summing to "
                f"{float(np.asarray(total)[row]):.6g} ({int(off_np.sum())} such rows)"
            )
    else:
        p = eqx.error_if(p, jnp.any(off), message)
    return p / jnp.sum(p, axis=-1, keepdims=True)


def check_labels(name: str, labels: Array, num_classes: int) -> Array:
    """Check that integer labels lie in [0, num_classes)."""
    bad = (labels < 0) | (labels >= num_classes)
    if not is_traced(bad):
        b = np.asarray(bad)
        if b.any():
            first = np.argwhere(b)[0]
            val = int(np.asarray(labels)[tuple(first)])
            raise ValueError(
                f"`{name}` must be class indices in [0, {num_classes}); got {val} ({_first_bad(b)})"
            )
        return labels
    return eqx.error_if(
        labels, jnp.any(bad), f"`{name}` must be class indices in [0, {num_classes})"
    )


def check_range(
    name: str,
    x: Array,
    lo: ArrayLike,
    hi: ArrayLike,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Array:
    """Check ``lo <= x <= hi`` elementwise (open ends on request); also rejects NaN."""
    below = (x <= lo) if lo_open else (x < lo)
    above = (x >= hi) if hi_open else (x > hi)
    bad = below | above | ~jnp.isfinite(x)
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    lo_s = _fmt(lo)
    hi_s = _fmt(hi)
    if not is_traced(x) and not is_traced(bad):
        b = np.asarray(bad)
        if b.any():
            xv = np.asarray(x)
            val = xv[tuple(np.argwhere(b)[0])] if xv.ndim else xv
            raise ValueError(
                f"`{name}` must lie in {left}{lo_s}, {hi_s}{right}; got {float(val):.6g}"
                + (f" ({_first_bad(b)})" if xv.ndim else "")
            )
        return x
    return eqx.error_if(x, jnp.any(bad), f"`{name}` must lie in {left}{lo_s}, {hi_s}{right}")


def _fmt(v: ArrayLike) -> str:
    if isinstance(v, (int, float)):
        return f"{v:g}"
    if is_traced(v):
        return "the bound"
    a = np.asarray(v)
    return f"{float(a):g}" if a.ndim == 0 else "the bound"


def check_shape(name: str, x: Array, shape: tuple[int | None, ...], *, hint: str = "") -> None:
    """Check ``x.shape`` against ``shape`` (``None`` matches any size)."""
    ok = x.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        msg = f"`{name}` must have shape {want}; got {tuple(x.shape)}"
        raise ValueError(msg + (f". {hint}" if hint else ""))


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def as_counts(name: str, x: Any, *, ndim: int | tuple[int, ...] = 2) -> Array:
    """Annotation counts: whole, non-negative numbers, as int32."""
    counts = as_int_array(name, x, ndim=ndim)
    return check_values(counts, counts < 0, f"`{name}` must be non-negative counts; got a negative")
