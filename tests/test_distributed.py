"""Several processes: two JAX processes on localhost (CPU collectives) against one."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import cleverjax as cj
from cleverjax import distributed
from cleverjax.study import load_study, run_study

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20  # seconds: initialisation and heartbeat limits given to the workers

# The same simulations in one process and in two; `initialize` returns at once for one.
CASES = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import cleverjax as cj

    def inputs(num_images=1001, num_classes=4):
        # NumPy, so that nothing but the simulators is compiled.
        rng = np.random.default_rng(50)
        p = rng.dirichlet(np.full(num_classes, 0.5), num_images).astype(np.float32)
        rho = rng.integers(0, num_classes, num_images).astype(np.int32)
        return p, rho, np.arange(num_images, dtype=np.int32) % 7

    def simulate_all(cases):
        # The fast cases; with cases == "all" also the streamed counts and a sweep.
        p, rho, num = inputs()
        key = jax.random.key(70)
        pool = cj.Annotators(jnp.array([0.1, 0.5, 0.3]))
        batch = cj.simulate_annotations(key, p, rho, num_annotations=num, delta=pool,
                                        return_details=True)
        out = {
            "counts": cj.simulate_counts(key, p, rho, num_annotations=num, delta=0.3),
            "labels": batch.labels,
            "accepted": batch.accepted,
            "worker": batch.worker,
        }
        # Devices divide 1000 images: each keeps its own rows, padded to whole blocks.
        even = cj.simulate_counts(key, p[:1000], rho[:1000], num_annotations=num[:1000],
                                  delta=0.3, block_size=64)
        out["even"] = even
        if jax.process_count() > 1:
            out["even_stays_sharded"] = np.array(not even.is_fully_replicated)
        if cases == "all":
            out["streamed"] = cj.simulate_counts(key, p, rho, num_annotations=num, delta=pool,
                                                 method="annotations")
            out["sweep"] = cj.simulate_sweep(key, p, rho, delta=jnp.array([0.1, 0.6]),
                                             num_annotations=jnp.array([3, 40]), num_seeds=2)
        return cj.distributed.gather(out)

    def fit_case():
        # Biased counts drawn with NumPy (delta 0.3), unbiased ones on the first 60 images.
        rng = np.random.default_rng(51)
        n, k = 300, 4
        p = rng.dirichlet(np.full(k, 0.5), n)
        rho = rng.integers(0, k, n).astype(np.int32)
        accept = 0.3 * np.eye(k)[rho] + 0.7 * p
        biased = np.stack([rng.multinomial(1 + i % 5, a) for i, a in enumerate(accept)])
        unbiased = np.zeros_like(biased)
        unbiased[:60] = [rng.multinomial(8, q) for q in p[:60]]
        res = cj.fit(jax.random.key(4), biased.astype(np.int32), rho,
                     unbiased_counts=unbiased.astype(np.int32), num_ppc_replicates=4)
        return {"delta": np.array(res.delta), "delta_interval": np.array(res.delta_interval),
                "posterior_mean": np.asarray(res.posterior_mean),
                "lower": np.asarray(res.lower), "upper": np.asarray(res.upper),
                "ppc_replicated": np.asarray(res.ppc.replicated)}
""")

STUDY = """
truth = { preset = "Turkey", images = 150 }
deltas = [0.3]
annotations = [3, 10]
seeds = [0, 1]
methods = ["SPA", "CleverLabel", "CleverLabel+GT delta"]
calibration_images = 60
"""

WORKER = CASES + textwrap.dedent("""
    import os, sys
    from jax.sharding import PartitionSpec

    mode, port, pid, num, out_path = sys.argv[1:6]  # "fast", "all", "fit", "study" or "die"
    pid, num = int(pid), int(num)
    if mode == "study":  # the command line joins the processes itself
        from pathlib import Path
        from cleverjax._cli import main
        # Only process 0 touches the folder: process 1 gets one that must stay unmade.
        folder = out_path if pid == 0 else out_path + "-process-1"
        sys.exit(main(["study", "run", str(Path(out_path).parent / "study.toml"), "--out",
                       folder, "--quiet", "--coordinator", f"127.0.0.1:{port}",
                       "--num-processes", str(num), "--process-id", str(pid)]))
    cj.distributed.initialize(f"127.0.0.1:{port}", num, pid, initialization_timeout=20,
                              heartbeat_timeout=5, shutdown_timeout=10)
    assert jax.process_count() == num and len(jax.devices()) == 2 * num, jax.devices()
    if mode == "die":
        if pid == 1:
            os._exit(1)  # dies without a word to the others
        p, rho, num = inputs()
        counts = cj.simulate_counts(jax.random.key(0), p, rho, num_annotations=num, delta=0.3)
        cj.distributed.gather(counts)
        print("gathered without the other process", flush=True)
        sys.exit(0)
    if mode == "fit":
        result = fit_case()
        if pid == 0:
            np.savez(out_path, **result)
        sys.exit(0)
    result = simulate_all(mode)
    # The fit's building blocks: rows from every process's share, or from all rows.
    mesh = cj.distributed.row_mesh()
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    w = np.array([1.0, -2.0, 0.5], np.float32)
    (full,) = cj.distributed.global_rows(x, mesh=mesh)
    (local,) = cj.distributed.global_rows(x[pid * 20:(pid + 1) * 20], mesh=mesh,
                                          process_local=True)
    (w_all,) = cj.distributed.replicate(w, mesh=mesh)
    assert full.sharding.spec == PartitionSpec(("rows",)), full.sharding
    assert len(full.addressable_shards) == 2 and full.addressable_shards[0].data.shape == (10, 3)
    for bad, message in [((x[:38],), "pad to 40"), ((x[: 20 - pid],), "same number of rows")]:
        try:
            cj.distributed.global_rows(*bad, mesh=mesh, process_local=message != "pad to 40")
        except ValueError as err:
            assert message in str(err), err
        else:
            raise AssertionError(f"no error for {message!r}")
    row = jax.jit(lambda a, v: a @ v)
    result.update(
        full=cj.distributed.gather(full),
        local=cj.distributed.gather(local),
        full_rows=cj.distributed.gather(row(full, w_all)),
        local_total=cj.distributed.gather(jax.jit(lambda a: a.sum(0))(local)),
    )
    if pid == 0:
        np.savez(out_path, **result)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(x64: bool = False) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_ENABLE_X64"] = "1" if x64 else "0"
    return env


def _launch(mode: str, out_path: Path, counts=(2, 2), x64: bool = False):
    """Start one worker per entry of ``counts`` (its --num-processes); return them."""
    port = str(_free_port())
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, port, str(pid), str(num), str(out_path)],
            env=_env(x64),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid, num in enumerate(counts)
    ]


def _finish(procs, timeout: float):
    """Wait for every worker (kill them past ``timeout``); return (rc, stdout, stderr)."""
    out = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"worker {proc.args[3:5]} still running after {timeout} s:\n{stderr}")
        out.append((proc.returncode, stdout, stderr))
    return out


def _run_pair(mode: str, out_path: Path, counts=(2, 2), x64=False) -> dict[str, np.ndarray]:
    """Results of a two-process run (or as many as ``counts`` has), written by process 0."""
    results = _finish(_launch(mode, out_path, counts, x64), timeout=600)
    for pid, (rc, _, stderr) in enumerate(results):
        assert rc == 0, f"process {pid} failed:\n{stderr[-3000:]}"
    return dict(np.load(out_path))


def _check_equal_one_process(got_all: dict[str, np.ndarray], cases: str) -> None:
    namespace: dict = {}
    exec(CASES, namespace)
    single = namespace["simulate_all"](cases)
    for name, want in single.items():
        got = got_all[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return _run_pair("fast", tmp_path_factory.mktemp("distributed") / "result.npz")


def test_simulations_equal_one_process(two_processes):
    _check_equal_one_process(two_processes, "fast")
    assert two_processes["even_stays_sharded"], "a divisible image count was gathered"


@pytest.mark.slow
def test_streamed_counts_and_sweep_equal_one_process(tmp_path):
    _check_equal_one_process(_run_pair("all", tmp_path / "result.npz"), "all")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::cleverjax.ConvergenceWarning")
def test_fit_equals_one_process(tmp_path):
    """Every process gets the whole result of a fit over the devices of both. In float64
    (both runs), so that the optimiser's stopping rule sees the same losses: the sums over
    rows differ only in their order."""
    got = _run_pair("fit", tmp_path / "two.npz", x64=True)
    want = _run_pair("fit", tmp_path / "one.npz", counts=(1,), x64=True)
    for name, value in want.items():
        assert got[name].shape == value.shape and got[name].dtype == value.dtype, name
    for name in ("delta", "delta_interval", "posterior_mean"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-3, err_msg=name)
    # Interval ends are quantiles of per-image draws, each image from its own key.
    for name in ("lower", "upper"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-2, err_msg=name)
    assert 0.1 < float(got["delta"]) < 0.5


@pytest.mark.slow  # two processes running a study: the fixture's cases cover the runtime
def test_study_equals_one_process(tmp_path):
    """`cleverjax study run` in two processes: process 0 alone writes the folder, and
    its table equals one process's (wall times apart)."""
    (tmp_path / "study.toml").write_text(STUDY)
    folder = tmp_path / "two"
    for pid, (rc, _, stderr) in enumerate(_finish(_launch("study", folder), timeout=300)):
        assert rc == 0, f"process {pid} failed:\n{stderr[-3000:]}"
    assert not Path(f"{folder}-process-1").exists()
    assert sorted(f.name for f in folder.iterdir()) == [
        "parts",
        "results.csv",
        "results.parquet",
        "study.json",
    ]
    assert not list((folder / "parts").glob(".*"))
    got = pd.read_parquet(folder / "results.parquet")
    want = run_study(load_study(tmp_path / "study.toml"), tmp_path / "one")
    assert len(got) == 2 * 2 * 3
    pd.testing.assert_frame_equal(got.drop(columns="seconds"), want.drop(columns="seconds"))


def test_simulations_equal_one_process_negative_control(two_processes):
    """Another key gives other counts: the comparison above can fail."""
    namespace: dict = {}
    exec(CASES, namespace)
    p, rho, num = namespace["inputs"]()
    other = cj.simulate_counts(jax.random.key(71), p, rho, num_annotations=num, delta=0.3)
    assert np.any(np.asarray(other) != two_processes["counts"])


def test_global_rows_and_gather(two_processes):
    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    w = np.array([1.0, -2.0, 0.5], np.float32)
    np.testing.assert_array_equal(two_processes["full"], x)
    np.testing.assert_array_equal(two_processes["local"], x)
    np.testing.assert_allclose(two_processes["full_rows"], x @ w, rtol=1e-6)
    np.testing.assert_allclose(two_processes["local_total"], x.sum(0), rtol=1e-6)


def test_dead_process_stops_the_others(tmp_path):
    """Process 1 dies after joining; process 0, waiting in a collective, exits with the
    runtime's error once the heartbeat limit (5 s) has passed, instead of hanging."""
    start = time.monotonic()
    (rc0, out0, err0), (rc1, _, _) = _finish(_launch("die", tmp_path / "x.npz"), timeout=120)
    elapsed = time.monotonic() - start
    assert rc1 == 1
    assert rc0 != 0 and "gathered" not in out0
    assert re.search(r"task died|heartbeat|unavailable|fatal", err0, re.I), err0[-3000:]
    assert elapsed < 60, elapsed


def test_mismatched_process_counts(tmp_path):
    (_, _, _), (rc1, _, err1) = _finish(
        _launch("fast", tmp_path / "x.npz", counts=(2, 3)), timeout=120
    )
    assert rc1 != 0
    assert "`num_processes` is 3 here but the coordinator" in err1, err1[-3000:]


def test_unreachable_coordinator():
    start = time.monotonic()
    with pytest.raises(distributed.DistributedError, match=r"could not reach the coordinator"):
        distributed.initialize(f"127.0.0.1:{_free_port()}", 2, 1, initialization_timeout=2)
    assert time.monotonic() - start < 10
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
    "args,kwargs,name",
    [
        (("localhost:1234", 2, 2), {}, "process_id"),
        (("localhost:1234", 2, -1), {}, "process_id"),
        (("localhost:1234", 0, 0), {}, "num_processes"),
        (("localhost", 2, 0), {}, "coordinator"),
        (("localhost:http", 2, 0), {}, "coordinator"),
        (("localhost:70000", 2, 0), {}, "coordinator"),
        ((":1234", 2, 0), {}, "coordinator"),
        (("::1:1234", 2, 0), {}, "coordinator"),
        (("localhost:1234", 2, 0), {"heartbeat_timeout": 0}, "heartbeat_timeout"),
    ],
)
def test_bad_arguments_name_the_argument(args, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        distributed.initialize(*args, **kwargs)
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
    "address,expected", [("10.0.0.1:1234", ("10.0.0.1", 1234)), ("[::1]:80", ("::1", 80))]
)
def test_parse_address(address, expected):
    assert distributed._parse_address(address) == expected


def test_one_process_needs_no_runtime():
    distributed.initialize("localhost:1234", 1, 0)
    assert not jax.distributed.is_initialized()


def test_command_line_options(monkeypatch):
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
    monkeypatch.delenv(distributed.ENV_PROCESS_ID, raising=False)
    parser = argparse.ArgumentParser()
    distributed.add_arguments(parser)
    args = parser.parse_args(["--process-id", "3"])
    assert (args.coordinator, args.num_processes, args.process_id) == ("10.0.0.1:1234", 4, 3)
    args.process_id = None
    with pytest.raises(ValueError, match=r"missing --process-id"):
        distributed.initialize_from_args(args)
    with pytest.raises(ValueError, match=r"`process_id` must be in \[0, 4\); got 4"):
        distributed.initialize_from_args(parser.parse_args(["--process-id", "4"]))
    with pytest.raises(ValueError, match=r"--coordinator auto"):
        distributed.initialize_from_args(parser.parse_args(["--coordinator", "auto"]))
    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES):
        monkeypatch.delenv(name)
    parser = argparse.ArgumentParser()
    distributed.add_arguments(parser)
    assert distributed.initialize_from_args(parser.parse_args([])) is False
    assert not jax.distributed.is_initialized()


def test_global_rows_one_process():
    mesh = distributed.row_mesh(jax.devices()[:1])
    x = np.arange(6.0).reshape(3, 2)
    (tree,) = distributed.global_rows({"a": x, "b": x[:, 0]}, mesh=mesh)
    np.testing.assert_array_equal(distributed.gather(tree)["a"], x)
    with pytest.raises(ValueError, match=r"same leading \(row\) axis"):
        distributed.global_rows(x, x[:2], mesh=mesh)
