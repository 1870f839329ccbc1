"""Wall time and peak memory of ``cleverjax.fit`` on the hard cases, each in a fresh process.

Data ("diverse"): every image's label distribution drawn from Dirichlet(0.2) over 10
classes, so that nearly every image is distinct; the proposal is the most likely class;
delta = 0.3; ``N`` biased annotations per image; 100 calibration images with 10 unbiased
annotations each. Each case runs ``fit`` with its default settings (predictive check
included) in a new Python process, with a compilation cache of its own (empty unless the
case is ``_warm``), and reports the wall time of the ``fit`` call
(compilation included), the process's peak memory during the call (``peak_rss_gib``: the
inputs, which stay in memory, count; ``inputs_rss_gib`` is the process before the call)
and the distinct rows.

Cases (``--cases`` to choose):

- ``diverse_1e5``: 10^5 images, N = 10 (target <= 20 s);
- ``diverse_1e5_warm`` / ``n100_warm``: the same as ``diverse_1e5`` / ``n100`` with the
  compilation cache filled by an earlier process (as a user's second run finds it);
- ``diverse_1e6``: 10^6 images, N = 10;
- ``diverse_1e7``: 10^7 images, N = 10 (target <= 10 min and <= 4 GiB);
- ``n100``: 10^4 images, N = 100 (target <= 30 s);
- ``n1000``: 10^4 images, N = 1000 (target <= 60 s and <= 2 GiB);
- ``mixed`` / ``mixed_base``: 10^4 images, 20 of them with N = 1000 and the rest N = 10,
  against the same images all with N = 10 (target: little more); ``mixed_warm`` /
  ``mixed_base_warm``: the same with each case's programs compiled by an earlier process,
  so that the comparison is of the work, not of which case compiled the shared programs;
- ``small_cold`` / ``small_warm``: 1000 images, N = 10, first with the compilation cache
  off, then with a cache filled by an earlier process (targets <= 15 s and <= 5 s);
- ``baseline``: NumPyro SVI on the uncollapsed model (a latent p per image, AutoNormal,
  Trace_ELBO, Adam) on the 10^5-image data, steps timed after compilation;
- ``weights``: the polynomial weights W_s alone (value and gradient in delta and 1*) for
  every (c, N) pair at N = 100 and N = 1000, by the three-term recurrence that ``fit``
  uses beyond 64 terms against the windowed double sum it replaced, same run.

    python benchmarks/fit_scale.py                 # every case
    python benchmarks/fit_scale.py --cases small_cold small_warm
    python benchmarks/fit_scale.py --tiny          # seconds-long smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CASES = {
    "diverse_1e5": dict(images=100_000, n=10),
    "diverse_1e5_warm": dict(images=100_000, n=10, cache="warm"),
    "diverse_1e6": dict(images=1_000_000, n=10),
    "diverse_1e7": dict(images=10_000_000, n=10),
    "n100": dict(images=10_000, n=100),
    "n100_warm": dict(images=10_000, n=100, cache="warm"),
    "n1000": dict(images=10_000, n=1000),
    "mixed": dict(images=10_000, n=10, large=20),
    "mixed_base": dict(images=10_000, n=10),
    "mixed_warm": dict(images=10_000, n=10, large=20, cache="warm"),
    "mixed_base_warm": dict(images=10_000, n=10, cache="warm"),
    "small_cold": dict(images=1000, n=10, cache="off"),
    "small_warm": dict(images=1000, n=10, cache="warm"),
    "baseline": dict(images=100_000, n=10, baseline=True),
    "weights": dict(weights=True),
}
TINY = {
    "diverse_1e5": dict(images=2000, n=10),
    "baseline": dict(images=500, n=10, baseline=True),
    "weights": dict(weights=True, sizes=[100]),
}


TRUE_DELTA = 0.3


def diverse(images: int, n: int, *, large: int = 0, seed: int = 0):
    """Diverse ground truth, proposals, biased and unbiased counts (see the module doc)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import cleverjax as cj

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(10, 0.2), size=images).astype(np.float32)
    rho = np.argmax(p, axis=1).astype(np.int32)
    num = np.full(images, n, np.int32)
    num[:large] = 1000
    k_sim, k_cal = jax.random.split(jax.random.key(seed))
    biased = cj.simulate_counts(
        k_sim, jnp.asarray(p), jnp.asarray(rho), num_annotations=jnp.asarray(num), delta=TRUE_DELTA
    )
    cal = cj.calibration_sample(k_cal, jnp.asarray(p), num_images=100, num_annotations=10)
    unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
    return p, np.asarray(rho), np.asarray(biased), np.asarray(unbiased)


def peak_rss_gib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def _status_gib(field: str) -> float | None:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from /proc, in GiB (Linux only)."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 2**20


def reset_peak_rss() -> bool:
    """Start a new peak-memory window (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def run_case(name: str, spec: dict) -> dict:
    """One case in this (fresh) process."""
    import numpyro

    numpyro.set_host_device_count(os.cpu_count() or 1)  # as the command line does
    import jax

    import cleverjax as cj
    from cleverjax._bench import device_name
    from cleverjax.bayes.data import prepare

    if spec.get("weights"):
        return dict(case=name, **weights(spec.get("sizes", [100, 1000])), device=device_name())
    p, rho, biased, unbiased = diverse(spec["images"], spec["n"], large=spec.get("large", 0))
    out = dict(case=name, images=spec["images"], annotations_per_image=spec["n"])
    if spec.get("large"):
        out["images_with_1000_annotations"] = spec["large"]
    if spec.get("baseline"):
        return {
            **out,
            **baseline(biased, rho, steps=spec.get("steps", 20)),
            "device": device_name(),
        }
    # The fit's own peak: the process's, from a window opened after the data were made
    # (the inputs stay in memory and count); the KL below comes after it.
    inputs_gib = _status_gib("VmRSS")
    windowed = reset_peak_rss()
    t0 = time.perf_counter()
    res = cj.fit(jax.random.key(1), biased, rho, unbiased_counts=unbiased)
    jax.block_until_ready((res.posterior_mean, res.lower, res.upper))
    wall = time.perf_counter() - t0
    fit_peak = _status_gib("VmHWM") if windowed else peak_rss_gib()
    kl = float(cj.kl_divergence(p, res.posterior_mean))
    out.update(
        fit_s=wall,
        steps=int(res.losses.shape[0]),
        converged=res.converged,
        step_seconds=res.step_seconds,
        stage_seconds=res.stage_seconds._asdict(),
        distinct_rows=prepare(biased, rho, unbiased, None).data.num_rows
        if spec["images"] <= 10**6
        else None,
        delta=res.delta,
        delta_interval=list(res.delta_interval),
        delta_covers_truth=bool(res.delta_interval[0] <= TRUE_DELTA <= res.delta_interval[1]),
        kl=kl,
        ppc_p=res.ppc.p_value if res.ppc is not None else None,
        peak_rss_gib=fit_peak,
        inputs_rss_gib=inputs_gib,
        cache=spec.get("cache", "default"),
        device=device_name(),
    )
    return out


def weights(sizes: list[int]) -> dict:
    """Seconds per evaluation (value and gradient) of every (c, N) pair's weights."""
    import jax
    import jax.numpy as jnp

    from cleverjax.bayes import likelihood

    def timed(fn, *args, repeats=3):
        out = fn(*args)
        jax.block_until_ready(out)
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / repeats

    out = {}
    for n in sizes:
        c = jnp.arange(n + 1, dtype=jnp.int32)
        total = jnp.full(n + 1, n, jnp.int32)
        window = likelihood.weight_window(n + 1)
        methods = {
            "recurrence": lambda d, w: likelihood.log_weights_counts(c, total, d, w, n + 1),
            "windowed_sum": lambda d, w: likelihood.windowed_log_weights(
                c, total, d, w, n + 1, window
            ),
        }
        for label, fn in methods.items():
            loss = jax.jit(
                jax.value_and_grad(
                    lambda d, w, fn=fn: jnp.sum(jax.nn.logsumexp(fn(d, w), axis=1)), argnums=(0, 1)
                )
            )
            out[f"n{n}_{label}_s"] = timed(loss, jnp.float32(0.3), jnp.float32(0.99))
        out[f"n{n}_speedup"] = out[f"n{n}_windowed_sum_s"] / out[f"n{n}_recurrence_s"]
    return out


def baseline(biased, rho, steps: int) -> dict:
    """NumPyro SVI on the uncollapsed model: image-steps per second after compilation."""
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    import cleverjax as cj

    k = biased.shape[1]
    kwargs = dict(mean=jnp.full((k, k), 1 / k), concentration=jnp.ones(k))
    model = cj.spa_model_uncollapsed
    svi = SVI(model, AutoNormal(model), optax.adam(1e-2), Trace_ELBO())
    b, r = jnp.asarray(biased), jnp.asarray(rho)
    state = svi.init(jax.random.key(3), b, r, **kwargs)
    update = jax.jit(lambda s: svi.update(s, b, r, **kwargs))
    t0 = time.perf_counter()
    state, loss = update(state)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, loss = update(state)
    jax.block_until_ready(loss)
    wall = time.perf_counter() - t0
    return dict(
        method="NumPyro SVI, uncollapsed model, AutoNormal",
        steps=steps,
        compile_s=compile_s,
        image_steps_per_s=biased.shape[0] * steps / wall,
        seconds_for_500_steps=500 * wall / steps + compile_s,
    )


def spawn(name: str, spec: dict, cache_dir: str) -> dict:
    env = dict(os.environ)
    cache = spec.get("cache", "default")
    env["CLEVERJAX_COMPILATION_CACHE"] = "off" if cache == "off" else cache_dir
    if cache == "warm":  # fill the cache in an earlier process
        subprocess.run(
            [sys.executable, __file__, "--one", name, json.dumps(spec)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--one", name, json.dumps(spec)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return dict(
            case=name, error=proc.stderr.strip().splitlines()[-1:], returncode=proc.returncode
        )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one[0], json.loads(args.one[1]))), flush=True)
        return
    cases = TINY if args.tiny else {n: CASES[n] for n in (args.cases or CASES)}
    results = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, spec in cases.items():
            # A cache of its own per case: a cold case compiles everything it needs, as
            # on a fresh machine, whatever ran before it.
            results[name] = spawn(name, spec, os.path.join(cache_dir, name))
            print(json.dumps(results[name]), flush=True)
    print(json.dumps(summary(results)), flush=True)


TARGETS = {
    "diverse_1e5": ("fit_s", 20.0),
    "diverse_1e5_warm": ("fit_s", 20.0),
    "diverse_1e7": ("fit_s", 600.0),
    "n100": ("fit_s", 30.0),
    "n100_warm": ("fit_s", 30.0),
    "n1000": ("fit_s", 60.0),
    "small_cold": ("fit_s", 15.0),
    "small_warm": ("fit_s", 5.0),
}


def summary(results: dict) -> dict:
    """Each measured case against its target (None where the case was not run)."""
    met = {}
    for name, (field, limit) in TARGETS.items():
        value = results.get(name, {}).get(field)
        met[name] = None if value is None else bool(value <= limit)
    for name, limit in (("diverse_1e7", 4.0), ("n1000", 2.0)):
        peak = results.get(name, {}).get("peak_rss_gib")
        met[f"{name}_memory"] = None if peak is None else bool(peak <= limit)
    for suffix in ("", "_warm"):
        mixed, base = results.get(f"mixed{suffix}", {}), results.get(f"mixed_base{suffix}", {})
        if "fit_s" in mixed and "fit_s" in base:
            met[f"mixed_over_base{suffix}"] = mixed["fit_s"] / base["fit_s"]
    baseline = results.get("baseline", {}).get("image_steps_per_s")
    misses = sorted(n for n, r in results.items() if r.get("delta_covers_truth") is False)
    return dict(
        case="summary",
        targets_met=met,
        delta_interval_misses=misses,
        baseline_image_steps_per_s=baseline,
    )


if __name__ == "__main__":
    main()
