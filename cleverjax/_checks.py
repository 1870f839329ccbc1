"""Input validation shared by the public wrappers.

Structure (shape, ndim, dtype) is checked in Python at trace time. Values are checked
eagerly with a clear ``ValueError`` when the array is concrete, and with
``eqx.error_if`` when it is traced (inside a caller's ``jit`` or ``vmap``), so the
check is never dead code.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
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


def _refuse(
    x: Array, bad: Any, message: str, detail: Callable[[np.ndarray], str] | None = None
) -> Array:
    """The one eager/traced branch: if any of ``bad`` holds, raise ``ValueError`` eagerly
    (``message``, then ``detail(bad)`` or where the first bad entry is), or attach
    ``eqx.error_if`` with ``message`` when traced. Returns ``x``, which callers must use."""
    if is_traced(x) or is_traced(bad):
        return eqx.error_if(x, jnp.any(bad), message)
    bad_np = np.asarray(bad)
    if bad_np.any():
        raise ValueError(f"{message}{detail(bad_np) if detail else f' ({_first_bad(bad_np)})'}")
    return x


# Concrete inputs are checked by one small compiled program per check (a flag, and the
# converted array where there is one) instead of a handful of operations run (and
# compiled) one by one; only when a flag is up does the eager code below find the first
# bad entry for the message.


def flag_down(flag: Array) -> bool:
    """Whether a check's flag is down, known now: a flag computed inside a caller's
    trace (constant inputs under ``jit``) is not, and goes the general way."""
    return not is_traced(flag) and not bool(flag)


def not_density(x: Array) -> Array:
    """Entries that cannot be probabilities or densities: not finite, or negative."""
    return ~jnp.isfinite(x) | (x < 0)


def _off_simplex(total: Array, atol: Any) -> Array:
    return jnp.abs(total - 1) > atol


def _not_whole(arr: Array) -> Array:
    return ~jnp.isfinite(arr) | (arr != jnp.round(arr))


def _outside_labels(labels: Array, num_classes: Any) -> Array:
    return (labels < 0) | (labels >= num_classes)


def _outside_range(x: Any, lo: Any, hi: Any, lo_open: bool, hi_open: bool) -> Array:
    below = (x <= lo) if lo_open else (x < lo)
    above = (x >= hi) if hi_open else (x > hi)
    return below | above | ~jnp.isfinite(x)


@jax.jit
def _as_whole_int32(arr: Array) -> tuple[Array, Array]:
    return jnp.any(_not_whole(arr)), arr.astype(jnp.int32)


@jax.jit
def _simplex_flags(p: Array, atol: Array) -> tuple[Array, Array]:
    total = jnp.sum(p, axis=-1)
    bad = jnp.any(not_density(p)) | jnp.any(_off_simplex(total, atol))
    return bad, p / total[..., None]


@jax.jit
def _labels_outside(labels: Array, num_classes: Array) -> Array:
    return jnp.any(_outside_labels(labels, num_classes))


@functools.partial(jax.jit, static_argnames=("lo_open", "hi_open"))
def _outside(x: Array, lo: Array, hi: Array, *, lo_open: bool, hi_open: bool) -> Array:
    return jnp.any(_outside_range(x, lo, hi, lo_open, hi_open))


@jax.jit
def _any_negative(x: Array) -> Array:
    return jnp.any(x < 0)


def _first_value(x: Any, bad: np.ndarray) -> Any:
    """The entry of ``x`` at the first bad index."""
    xv = np.asarray(x)
    return xv[tuple(np.argwhere(np.atleast_1d(bad))[0])] if xv.ndim else xv


def check_values(x: Array, bad: Array, message: str) -> Array:
    """Raise if any of ``bad`` is true: ``ValueError`` eagerly, ``eqx.error_if`` when traced.

    Returns ``x`` (with the runtime check attached when traced), which callers must use.
    """
    return _refuse(x, bad, message)


def as_float_array(name: str, x: Any, *, ndim: int | tuple[int, ...]) -> Array:
    """Convert to a floating array of the default float dtype and check ``ndim``."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be an array of numbers; got {type(x).__name__}")
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"`{name}` must be an array of numbers; got {type(x).__name__}") from e
    _check_ndim(name, arr, ndim)
    if not (
        jnp.issubdtype(arr.dtype, jnp.floating)
        or jnp.issubdtype(arr.dtype, jnp.integer)
        or arr.dtype == jnp.bool_
    ):
        raise TypeError(f"`{name}` must hold real numbers; got dtype {arr.dtype}")
    return arr.astype(jnp.result_type(float))


def _check_ndim(name: str, arr: Any, ndim: int | tuple[int, ...]) -> None:
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in ndims:
        want = " or ".join(str(d) for d in ndims)
        raise ValueError(f"`{name}` must have {want} dimension(s); got shape {arr.shape}")


def as_int_array(name: str, x: Any, *, ndim: int | tuple[int, ...]) -> Array:
    """Convert to int32, refusing floats that are not whole numbers."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be an array of integers; got {type(x).__name__}")
    arr = jnp.asarray(x)
    _check_ndim(name, arr, ndim)
    if jnp.issubdtype(arr.dtype, jnp.floating):
        if not is_traced(arr):
            bad, whole = _as_whole_int32(arr)
            if flag_down(bad):
                return whole
        arr = _refuse(
            arr,
            _not_whole(arr),
            f"`{name}` must hold whole numbers",
            lambda b: f"; got {float(_first_value(arr, b)):g} ({_first_bad(b)})",
        )
    elif not (jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == jnp.bool_):
        raise TypeError(f"`{name}` must hold integers; got dtype {arr.dtype}")
    return arr.astype(jnp.int32)


def check_simplex_rows(name: str, p: Array, *, atol: float = SIMPLEX_ATOL) -> Array:
    """Check that every row of ``p`` is a probability vector; return rows renormalised."""
    if not is_traced(p):
        bad, normalised = _simplex_flags(p, atol)
        if flag_down(bad):
            return normalised
    p = check_values(p, ~jnp.isfinite(p), f"`{name}` must be finite; got NaN or inf")
    p = check_values(p, p < 0, f"`{name}` must be non-negative; got a negative probability")
    total = jnp.sum(p, axis=-1)

    def detail(off: np.ndarray) -> str:
        row = int(np.argmax(off))
        return (
            f"; got row {row} summing to {float(np.asarray(total)[row]):.6g} "
            f"({int(off.sum())} such rows)"
        )

    message = f"`{name}` rows must sum to 1 (within {atol:g})"
    p = _refuse(p, _off_simplex(total, atol), message, detail)
    return p / jnp.sum(p, axis=-1, keepdims=True)


def check_labels(name: str, labels: Array, num_classes: int) -> Array:
    """Check that integer labels lie in [0, num_classes)."""
    if not is_traced(labels) and flag_down(_labels_outside(labels, num_classes)):
        return labels
    return _refuse(
        labels,
        _outside_labels(labels, num_classes),
        f"`{name}` must be class indices in [0, {num_classes})",
        lambda b: f"; got {int(_first_value(labels, b))} ({_first_bad(b)})",
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
    if not any(is_traced(v) for v in (x, lo, hi)) and flag_down(
        _outside(x, lo, hi, lo_open=lo_open, hi_open=hi_open)
    ):
        return x
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    message = f"`{name}` must lie in {left}{_fmt(lo)}, {_fmt(hi)}{right}"

    def detail(b: np.ndarray) -> str:
        where = f" ({_first_bad(b)})" if np.ndim(x) else ""
        return f"; got {float(_first_value(x, b)):.6g}{where}"

    return _refuse(x, _outside_range(x, lo, hi, lo_open, hi_open), message, detail)


def in_range(name: str, x: Array, lo: ArrayLike, hi: ArrayLike, **open_ends: bool) -> Array:
    """``lo <= x <= hi`` (see :func:`check_range`), eagerly or under ``jit``."""
    return check_range(name, x, lo, hi, **open_ends)


def unit_interval(name: str, x: Array) -> Array:
    """``0 <= x <= 1``: a probability."""
    return check_range(name, x, 0.0, 1.0)


def _fmt(v: ArrayLike) -> str:
    if isinstance(v, (int, float)):
        return f"{v:g}"
    if is_traced(v):
        return "the bound"
    a = np.asarray(v)
    return f"{float(a):g}" if a.ndim == 0 else "the bound"


def _int_at_least(name: str, value: Any, low: int, what: str) -> int:
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not integer or value < low:
        raise ValueError(f"`{name}` must be a {what} int; got {value!r}")
    return int(value)


def beta_pair(name: str, prior: Any) -> tuple[float, float]:
    """The ``(a, b)`` of a Beta prior as two positive finite floats."""
    try:
        a, b = (float(v) for v in prior)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{name}` must be a pair (a, b) of Beta parameters; got {prior!r}"
        ) from err
    if not (a > 0 and b > 0 and np.isfinite(a) and np.isfinite(b)):
        raise ValueError(f"`{name}` must be two positive finite numbers; got {prior!r}")
    return a, b


def positive_int(name: str, value: Any) -> int:
    """A Python or NumPy integer ``>= 1`` (not a bool), as ``int``."""
    return _int_at_least(name, value, 1, "positive")


def non_negative_int(name: str, value: Any) -> int:
    """A Python or NumPy integer ``>= 0`` (not a bool), as ``int``."""
    return _int_at_least(name, value, 0, "non-negative")


def as_path(name: str, path: Any) -> Path:
    """A ``str`` or :class:`os.PathLike` as a :class:`~pathlib.Path`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path (str or os.PathLike); got {type(path).__name__}")
    return Path(path)


def existing_file(path: Path, shown: str) -> Path:
    """``path`` if it is a file; ``FileNotFoundError`` or ``ValueError`` naming ``shown``."""
    if not path.exists():
        raise FileNotFoundError(f"{shown}: no such file")
    if not path.is_file():
        raise ValueError(f"{shown}: not a file")
    return path


def existing_path(path: Path, shown: str) -> Path:
    """``path`` if it exists (a file or a folder); else ``FileNotFoundError``."""
    if not path.exists():
        raise FileNotFoundError(f"{shown}: no such file or folder")
    return path


def check_shape(
    name: str, x: Array | np.ndarray, shape: tuple[int | None, ...], *, hint: str = ""
) -> None:
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
    if not is_traced(counts) and flag_down(_any_negative(counts)):
        return counts
    return check_values(counts, counts < 0, f"`{name}` must be non-negative counts; got a negative")
