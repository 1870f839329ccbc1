"""The persistent compilation cache that cleverjax manages by default.

Compiling the Bayesian fit takes far longer than running it on small data; JAX can keep
compiled programs on disk, so that a later process skips the compilation. On import,
cleverjax points JAX's compilation cache at ``$XDG_CACHE_HOME/cleverjax/jax`` (by
default ``~/.cache/cleverjax/jax``) unless the caller has configured a cache already.

Set the environment variable ``CLEVERJAX_COMPILATION_CACHE`` before importing cleverjax
to ``off`` (or ``0``) to leave JAX's cache alone, or to a directory to use that one. The
cache takes effect when cleverjax is imported before the first JAX compilation.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "CLEVERJAX_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no", "none")
MIN_COMPILE_SECONDS = 0.0
"""Programs that compile faster than this are not kept. Every program is: a fit runs
about fifty small ones besides its two large ones, and loading them is faster than
compiling them again (about a second in all on a 2-core CPU)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cleverjax" / "jax"


def configure_compilation_cache() -> Path | None:
    """Point JAX's persistent compilation cache at cleverjax's directory (see the module
    docstring); return the directory, or ``None`` when it is off or the caller's own."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in _OFF or jax.config.jax_compilation_cache_dir:
        return None
    path = Path(setting).expanduser() if setting else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without a cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path


FAST_COMPILE_WORK = 100_000
"""Rows times polynomial terms at or below which the Bayesian fit's large programs are
compiled at XLA's optimisation level 1 on CPU (see :func:`compile_options`)."""


def compile_options(work: int, platform: str) -> tuple[tuple[str, int], ...]:
    """XLA options for a large program over ``work`` rows x terms on ``platform``, as a
    hashable tuple of pairs (``dict(...)`` of it is ``jax.jit``'s ``compiler_options``).

    On CPU, small data compile at optimisation level 1: about a third less compile time
    (1000 diverse images: fit 20 -> 14-15 s in a fresh process) for evaluations that are
    no slower at that size; on large data level 1 makes each evaluation 25-35 % slower, so
    they keep the default. Other platforms keep the default."""
    if platform == "cpu" and work <= FAST_COMPILE_WORK:
        return (("xla_backend_optimization_level", 1),)
    return ()
