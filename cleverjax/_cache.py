"""The persistent compilation cache that cleverjax manages by default.

Compiling the Bayesian fit takes far longer than running it on small data; JAX can keep
compiled programs on disk, so that a later process skips the compilation. On import,
cleverjax points JAX's compilation cache at ``$XDG_CACHE_HOME/cleverjax/jax`` (by
default ``~/.cache/cleverjax/jax``) unless the caller has configured a cache already.

Set the environment variable ``CLEVERJAX_COMPILATION_CACHE`` before importing cleverjax
to ``off`` (or ``0``) to leave JAX's cache alone, or to a directory to use that one. The
cache takes effect when cleverjax is imported before the first JAX compilation. The
fit's large programs are kept there in their traced form as well (see
:mod:`cleverjax._programs`), which the same setting turns off.
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


def cache_turned_off() -> bool:
    """Whether ``CLEVERJAX_COMPILATION_CACHE`` turns cleverjax's caches off."""
    return os.environ.get(ENV, "").strip().lower() in _OFF


def configure_compilation_cache() -> Path | None:
    """Point JAX's persistent compilation cache at cleverjax's directory (see the module
    docstring); return the directory, or ``None`` when it is off or the caller's own."""
    if cache_turned_off() or jax.config.jax_compilation_cache_dir:
        return None
    setting = os.environ.get(ENV, "").strip()
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


CROWDED_MAPS = 0.5
"""Share of the system's memory-map limit above which :func:`release_compiled_programs`
clears JAX's in-memory caches of compiled programs."""


def memory_maps() -> tuple[int, int] | None:
    """(memory maps this process holds, the system's limit per process), or ``None`` where
    the system does not say (anything but Linux)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            held = maps.read().count(b"\n")
        with open("/proc/sys/vm/max_map_count") as limit:
            return held, int(limit.read())
    except (OSError, ValueError):
        return None


def release_compiled_programs(share: float = CROWDED_MAPS) -> bool:
    """Clear JAX's in-memory caches of compiled programs when this process holds more than
    ``share`` of the system's memory-map limit; return whether it did.

    XLA's CPU code takes about 200 memory maps per compiled program, and a program stays
    loaded while JAX's caches hold it. A long loop over many data shapes (a simulation
    study, a coverage grid) compiles programs for each shape; on Linux (65530 maps by
    default) the process dies inside LLVM ("Unable to allocate section memory") after about
    300 of them. Programs released here are compiled again, or loaded from the persistent
    compilation cache, when next needed. :func:`cleverjax.fit`, :func:`cleverjax.fit_annotators`
    and the study runner call this before their work; a loop of your own over other JAX
    programs can call it between steps.

    Raises:
        ValueError: if ``share`` is not a number in (0, 1].
    """
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ValueError(f"`share` must be a number in (0, 1]; got {share!r}")
    held = memory_maps()
    if held is None or held[0] <= share * held[1]:
        return False
    jax.clear_caches()
    from ._programs import forget_programs

    forget_programs()
    return True
