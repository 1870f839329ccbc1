"""Several processes and hosts: JAX's multi-process runtime, set up for cleverjax.

One process runs per host (or per GPU); :func:`initialize` joins them through
``jax.distributed``. From then on :func:`cleverjax.simulate_counts`,
:func:`cleverjax.simulate_annotations` and :func:`cleverjax.simulate_sweep` shard the
image axis over the devices of all processes, and give the same result for a given key
as one process does (an image's random numbers depend on the key and its index only).
Every process must make the same calls with the same arguments (JAX's multi-controller
model); results are global arrays, and :func:`gather` brings one to every process.

:func:`global_rows`, :func:`replicate`, :func:`gather` and :func:`local_arrays` are the
building blocks for data-parallel code such as the Bayesian fit: global arrays sharded on
the row axis, built from each process's share of the rows or from rows that every process
holds, and brought back to every process.

:func:`add_arguments` and :func:`initialize_from_args` give a command line the options
``--coordinator HOST:PORT --num-processes P --process-id I``.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "DistributedError",
    "add_arguments",
    "gather",
    "global_rows",
    "initialize",
    "initialize_from_args",
    "local_arrays",
    "replicate",
    "row_mesh",
]

ENV_COORDINATOR = "CLEVERJAX_COORDINATOR"
"""Environment variable: default of ``--coordinator`` (``HOST:PORT``, or ``auto``)."""
ENV_NUM_PROCESSES = "CLEVERJAX_NUM_PROCESSES"
"""Environment variable: default of ``--num-processes``."""
ENV_PROCESS_ID = "CLEVERJAX_PROCESS_ID"
"""Environment variable: default of ``--process-id``."""

AUTO = "auto"


class DistributedError(RuntimeError):
    """The processes could not form (or keep) a cluster: unreachable coordinator,
    disagreeing process counts, or a runtime that was started too late."""


# ----------------------------------------------------------------------------------
# Joining the cluster
# ----------------------------------------------------------------------------------


def _parse_address(coordinator: Any) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) -> (host, port)."""
    if not isinstance(coordinator, str):
        raise ValueError(
            f"`coordinator` must be a string HOST:PORT, e.g. '10.0.0.1:1234'; "
            f"got {type(coordinator).__name__} {coordinator!r}"
        )
    host, sep, port_s = coordinator.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or (":" in host and not coordinator.startswith("[")):
        raise ValueError(
            f"`coordinator` must have the form HOST:PORT (IPv6 as [ADDR]:PORT), "
            f"e.g. '10.0.0.1:1234'; got {coordinator!r}"
        )
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(
            f"`coordinator` port must be an integer in [1, 65535]; got {port_s!r} "
            f"in {coordinator!r}"
        )
    return host, int(port_s)


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int; got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value >= high):
        where = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"`{name}` must be {where}; got {value}")
    return int(value)


def _wait_for_coordinator(host: str, port: int, timeout: int) -> None:
    """Retry a TCP connection until the coordinator listens; raise after ``timeout`` s.

    The runtime itself aborts the process on this timeout with a message that blames a
    dead task; this check turns the common mistake into an exception that says what to do.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"could not reach the coordinator at {host}:{port} within {timeout:g} s "
                    f"({err}): start process 0 on that host, check the address and port and "
                    f"that the port is open to this host"
                ) from err
            time.sleep(0.2)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    initialization_timeout: int = 300,
    heartbeat_timeout: int = 100,
    shutdown_timeout: int = 300,
) -> None:
    """Join this process to a cluster of JAX processes (``jax.distributed.initialize``).

    Call it once per process, before any JAX computation. With no arguments, the
    runtime detects the cluster itself (SLURM, Open MPI, Cloud TPU). Otherwise give
    ``coordinator``, ``num_processes`` and ``process_id``: process 0 runs the
    coordinator at ``coordinator``, the others connect to it. ``num_processes == 1``
    needs no runtime and returns at once.

    The arguments are checked before the runtime is touched. On the CPU the collectives
    use gloo unless another implementation was chosen. A dead process makes the others
    exit (the runtime aborts them) once ``heartbeat_timeout`` has passed.

    Args:
        coordinator: ``"HOST:PORT"`` of process 0, the same for every process
            (``"[ADDR]:PORT"`` for IPv6), or None to detect it.
        num_processes: number of processes, ``>= 1``, the same for every process.
        process_id: this process's id, in ``[0, num_processes)``, each id used once.
        local_device_ids: keyword-only; restrict this process to these local devices
            (default: all of them, one GPU per process under SLURM / Open MPI).
        initialization_timeout: keyword-only; seconds to wait for all processes to join.
        heartbeat_timeout: keyword-only; seconds without a heartbeat after which a
            process counts as dead and the others stop.
        shutdown_timeout: keyword-only; seconds a finished process waits at exit for the
            others to finish.

    Raises:
        ValueError: on a malformed address, a count below 1, a process id out of range,
            or a timeout that is not a positive int.
        DistributedError: if the coordinator cannot be reached within
            ``initialization_timeout``, the processes disagree on their number, or
            JAX has already started computing in this process.

    Examples:
        On each of two hosts, with ``I`` = 0 on the first and 1 on the second:

        >>> import cleverjax as cj  # doctest: +SKIP
        >>> cj.distributed.initialize("10.0.0.1:1234", 2, I)  # doctest: +SKIP
    """
    if num_processes is not None:
        num_processes = _check_int("num_processes", num_processes, 1)
    if process_id is not None:
        high = num_processes if num_processes is not None else None
        process_id = _check_int("process_id", process_id, 0, high)
    address = None if coordinator is None else _parse_address(coordinator)
    timeouts = {
        "initialization_timeout": initialization_timeout,
        "heartbeat_timeout": heartbeat_timeout,
        "shutdown_timeout": shutdown_timeout,
    }
    for name, value in timeouts.items():
        _check_int(name, value, 1)
    if num_processes == 1:
        return
    if jax.distributed.is_initialized():
        raise DistributedError("`initialize` was already called in this process; call it once")
    # Older JAX had no CPU collectives by default; leave any other choice (e.g. mpi) alone.
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address is not None and process_id not in (None, 0):
        _wait_for_coordinator(*address, initialization_timeout)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=int(initialization_timeout),
            heartbeat_timeout_seconds=int(heartbeat_timeout),
            shutdown_timeout_seconds=int(shutdown_timeout),
        )
    except RuntimeError as err:
        raise DistributedError(
            f"JAX's multi-process runtime did not start: {err}. Call "
            f"`initialize` before any JAX computation, once per process"
        ) from err
    if num_processes is not None and jax.process_count() != num_processes:
        raise DistributedError(
            f"`num_processes` is {num_processes} here but the coordinator at {coordinator} "
            f"runs {jax.process_count()} processes: give every process the same count"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--coordinator``, ``--num-processes`` and ``--process-id`` to ``parser``.

    Their defaults come from the environment variables ``CLEVERJAX_COORDINATOR``,
    ``CLEVERJAX_NUM_PROCESSES`` and ``CLEVERJAX_PROCESS_ID``. ``--coordinator auto``
    lets the runtime detect the cluster (SLURM, Open MPI, Cloud TPU). Pass the parsed
    namespace to :func:`initialize_from_args`.

    Args:
        parser: the parser (or subparser) to extend.
    """
    group = parser.add_argument_group(
        "several processes",
        "run one process per host (or GPU); all processes take the same arguments "
        "except --process-id",
    )
    group.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=os.environ.get(ENV_COORDINATOR),
        help=f"address of process 0, or 'auto' to detect a SLURM / Open MPI / TPU "
        f"cluster (default: ${ENV_COORDINATOR}; none: one process)",
    )
    group.add_argument(
        "--num-processes",
        metavar="P",
        type=int,
        default=os.environ.get(ENV_NUM_PROCESSES),
        help=f"number of processes (default: ${ENV_NUM_PROCESSES})",
    )
    group.add_argument(
        "--process-id",
        metavar="I",
        type=int,
        default=os.environ.get(ENV_PROCESS_ID),
        help=f"this process's id in [0, P) (default: ${ENV_PROCESS_ID})",
    )


def initialize_from_args(args: argparse.Namespace, **kwargs: Any) -> bool:
    """Call :func:`initialize` with the options :func:`add_arguments` added.

    Nothing happens when none of the three options is given (one process).

    Args:
        args: the parsed namespace.
        **kwargs: passed on to :func:`initialize` (e.g. timeouts).

    Returns:
        True if this process joined a cluster of more than one process.

    Raises:
        ValueError: if only some of the options are given, or on bad values (see
            :func:`initialize`).
        DistributedError: see :func:`initialize`.
    """
    coordinator = getattr(args, "coordinator", None)
    num = getattr(args, "num_processes", None)
    pid = getattr(args, "process_id", None)
    if coordinator is None and num is None and pid is None:
        return False
    if coordinator == AUTO:
        if num is not None or pid is not None:
            raise ValueError(
                "`--coordinator auto` detects the process count and id; do not give "
                f"--num-processes ({num}) or --process-id ({pid}) with it"
            )
        initialize(**kwargs)
    else:
        missing = [
            f"--{name} (or ${env})"
            for name, env, value in [
                ("coordinator", ENV_COORDINATOR, coordinator),
                ("num-processes", ENV_NUM_PROCESSES, num),
                ("process-id", ENV_PROCESS_ID, pid),
            ]
            if value is None
        ]
        if missing:
            raise ValueError(
                "several processes need --coordinator, --num-processes and --process-id "
                f"together (or --coordinator auto); missing {', '.join(missing)}"
            )
        initialize(coordinator, num, pid, **kwargs)
        if num == 1:
            return False  # no runtime, and the backend is left unstarted
    return jax.process_count() > 1


# ----------------------------------------------------------------------------------
# Global arrays
# ----------------------------------------------------------------------------------


def row_mesh(devices: Sequence[jax.Device] | None = None, axis: str = "rows") -> Mesh:
    """A one-axis mesh over ``devices`` (default: the devices of all processes)."""
    devs = tuple(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("`devices` must name at least one device; got an empty sequence")
    return Mesh(np.array(devs), (axis,))


def _row_spec(mesh: Mesh) -> PartitionSpec:
    return PartitionSpec(mesh.axis_names)  # rows over every mesh axis at once


def global_rows(*trees: Any, mesh: Mesh, process_local: bool = False) -> tuple[Any, ...]:
    """Global arrays sharded on their first (row) axis over all devices of ``mesh``.

    Two ways to give the rows:

    * ``process_local=False`` (default): every process holds all rows (e.g. it read the
      whole file); each process keeps the rows of its own devices.
    * ``process_local=True``: each process holds only its share, the rows of its
      devices, in process order; all shares have the same number of rows.

    Rows are split evenly over ``mesh.size`` devices, so the global row count must be a
    multiple of it: pad first (e.g. with rows of zero weight).

    Args:
        *trees: arrays, or pytrees of arrays, each with a leading row axis; every leaf
            has the same number of rows.
        mesh: keyword-only; the devices (e.g. :func:`row_mesh`).
        process_local: keyword-only; whether the arrays hold this process's rows only.

    Returns:
        The trees with each leaf replaced by a global ``jax.Array``, one per argument.

    Raises:
        ValueError: if the leaves disagree on the row count, the count is not a multiple
            of the device count, or the processes' shares differ in size.
    """
    leaves = [np.asarray(x) for t in trees for x in jax.tree.leaves(t)]
    if not leaves:
        return tuple(trees)
    rows = {x.shape[0] if x.ndim else None for x in leaves}
    if None in rows or len(rows) != 1:
        raise ValueError(
            f"`global_rows` needs arrays with the same leading (row) axis; got shapes "
            f"{[x.shape for x in leaves]}"
        )
    (local_rows,) = rows
    sharding = NamedSharding(mesh, _row_spec(mesh))
    if process_local:
        shares = np.asarray(multihost_utils.process_allgather(np.int64(local_rows)))
        shares = shares.reshape(-1)
        if len(set(shares.tolist())) != 1:
            raise ValueError(
                f"`global_rows(process_local=True)` needs the same number of rows on every "
                f"process; got {shares.tolist()} (process order)"
            )
        total = local_rows * jax.process_count()
    else:
        total = local_rows
    if total % mesh.size:
        raise ValueError(
            f"`global_rows` splits rows evenly over {mesh.size} devices; got {total} rows: "
            f"pad to {-(-total // mesh.size) * mesh.size} (e.g. with rows of zero weight)"
        )

    def build(x):
        x = np.asarray(x)
        if process_local:
            return jax.make_array_from_process_local_data(sharding, x, (total, *x.shape[1:]))
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return tuple(jax.tree.map(build, t) for t in trees)


def replicate(*trees: Any, mesh: Mesh) -> tuple[Any, ...]:
    """Global arrays holding the same values on every device of ``mesh``.

    Every process must pass the same values (e.g. a small table or the parameters).

    Args:
        *trees: arrays, or pytrees of arrays.
        mesh: keyword-only; the devices.

    Returns:
        The trees with each leaf replaced by a replicated global ``jax.Array``.
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def build(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return tuple(jax.tree.map(build, t) for t in trees)


def gather(tree: Any) -> Any:
    """Bring (a pytree of) global arrays to every process as NumPy arrays.

    Arrays that this process holds in full (one process, or replicated) are copied
    without communication; others are all-gathered, a collective that every process
    must call. Write output files from process 0 only (``jax.process_index() == 0``).

    Args:
        tree: a ``jax.Array``, or a pytree of them (e.g. an ``AnnotationBatch``).

    Returns:
        The same pytree with NumPy arrays holding the global values.

    Examples:
        >>> import jax.numpy as jnp, cleverjax as cj
        >>> cj.distributed.gather(jnp.arange(3)).tolist()
        [0, 1, 2]
    """

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)


def local_arrays(tree: Any) -> Any:
    """``tree`` with each global array that spans several processes replaced by a local
    ``jax.Array`` holding its global value; every other leaf is returned as it is.

    Use it where code that expects local arrays (checks that read values, NumPy) takes
    the result of a data-parallel computation. With one process it does nothing. Where a
    leaf spans several processes this is a collective (see :func:`gather`): every process
    must call it.

    Args:
        tree: a pytree (leaves of any type).

    Returns:
        The same pytree.
    """

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.numpy.asarray(gather(x))
        return x

    return jax.tree.map(one, tree)
