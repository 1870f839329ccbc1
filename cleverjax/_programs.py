"""Traced programs kept on disk, so that a later process skips tracing and lowering as
well as XLA's compilation.

JAX's persistent compilation cache (see :mod:`cleverjax._cache`) spares a process from
compiling a program again, but the process still traces the Python function and lowers
it to StableHLO before it can look the compiled program up. For the Bayesian fit's large
programs that is most of a warm fit on small data (1000 images on a 2-core CPU: about
3.5 s of 6). :func:`stored_call` keeps each such program's StableHLO, serialised with
:mod:`jax.export`, in a folder ``cleverjax-programs`` inside the compilation cache's
directory; a later process reads it (milliseconds) and compiles it, which the
compilation cache answers.

A stored program is found by a digest of everything that determines it: the name and
static settings its caller gives, the arguments' tree structure, shapes, dtypes and
shardings, JAX's settings that change what is traced, the versions of jax, jaxlib,
numpyro, optax and equinox, and cleverjax's own source (any edit makes new programs).
Programs are stored only where JAX's compilation cache is on, in a local directory, and
in a single process: ``CLEVERJAX_COMPILATION_CACHE=off`` turns both off. Elsewhere, and
whenever storing or reading fails, the plain ``jax.jit`` path runs; results are the same
either way (the same StableHLO is compiled).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from ._cache import cache_turned_off

FOLDER = "cleverjax-programs"
_PACKAGES = ("jax", "jaxlib", "numpyro", "optax", "equinox", "flatbuffers")
_SETTINGS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
    "jax_threefry_partitionable",
    "jax_default_prng_impl",
)
_LOADED: dict[str, tuple[Any, Any]] = {}  # digest -> (jitted exported call, output tree)
_PLAIN: set[str] = set()  # digests whose export failed: the plain jit path


def program_dir() -> Path | None:
    """Where programs are stored, or ``None`` where they are not (see the module doc)."""
    if cache_turned_off():
        return None
    cache = jax.config.jax_compilation_cache_dir
    if not cache or "://" in str(cache) or jax.process_count() > 1:
        return None
    return Path(cache) / FOLDER


@functools.cache
def _fingerprint() -> str:
    """cleverjax's source and the versions of the packages that shape its programs."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    for name in _PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}={version};".encode())
    return digest.hexdigest()


def _digest(name: str, key, options: tuple, treedef, leaves: list) -> str:
    settings = tuple(getattr(jax.config, s, None) for s in _SETTINGS)
    parts = [
        _fingerprint(),
        name,
        repr(key),
        repr(tuple(options)),
        repr(settings),
        jax.default_backend(),
        str(treedef),
        *(
            f"{jax.typeof(x)!r}|{getattr(x, 'sharding', None)}|{getattr(x, 'committed', None)}"
            for x in leaves
        ),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _program(exported, options: tuple):
    return jax.jit(exported.call, compiler_options=dict(options) or None)


def _read(path: Path, options: tuple):
    from jax import export

    try:
        out_tree, blob = pickle.loads(path.read_bytes())
        return _program(export.deserialize(bytearray(blob)), options), out_tree
    except Exception:  # absent, partly written or unreadable: export it again
        return None


def _export(path: Path, plain, treedef, leaves: list, options: tuple):
    from jax import export

    out_tree = []

    def flat(*xs):
        out = plain(*jax.tree.unflatten(treedef, xs))
        out_tree.append(jax.tree.structure(out))
        return jax.tree.leaves(out)

    exported = export.export(jax.jit(flat, compiler_options=dict(options) or None))(*leaves)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(pickle.dumps((out_tree[0], bytes(exported.serialize()))))
        os.replace(partial, path)  # whole or not at all, for processes reading it
    except OSError:
        pass  # a read-only cache: the program still runs, unstored
    return _program(exported, options), out_tree[0]


def stored_call(jitted, *args, name: str, key=(), options: tuple = (), **static):
    """``jitted(*args, **static)``, through a program stored on disk where programs are
    stored (see the module doc).

    ``jitted`` is a ``jax.jit`` function (its ``__wrapped__`` is traced when the program
    is not stored yet); ``static`` are its static keyword arguments. ``name`` and ``key``
    (a value whose ``repr`` is the same in every process) must tell apart every function
    that one ``name`` can stand for, e.g. the settings a closure captured; ``options``:
    the XLA compiler options ``jitted`` was made with, as pairs."""
    folder = program_dir()
    if folder is None:
        return jitted(*args, **static)
    leaves, treedef = jax.tree.flatten(args)
    digest = _digest(name, (key, sorted(static.items())), options, treedef, leaves)
    if digest in _PLAIN:
        return jitted(*args, **static)
    hit = _LOADED.get(digest)
    if hit is None:
        path = folder / f"{name}-{digest[:40]}.exported"
        try:
            hit = _read(path, options)
            if hit is None:
                plain = functools.partial(jitted.__wrapped__, **static)
                hit = _export(path, plain, treedef, leaves, options)
        except Exception:
            # Not exportable here (jax.export's serialiser needs flatbuffers; a platform
            # may lower to calls it refuses): the plain path, which also raises a caller's
            # error as it would without the store.
            _PLAIN.add(digest)
            return jitted(*args, **static)
        _LOADED[digest] = hit
    program, out_tree = hit
    return jax.tree.unflatten(out_tree, program(*leaves))


def forget_programs() -> None:
    """Drop the programs this process has read or stored (they stay on disk)."""
    _LOADED.clear()
    _PLAIN.clear()
