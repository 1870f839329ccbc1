"""The resumable runner: score every cell once, write each atomically, then the table.

Layout of a study folder::

    DIR/study.json           the normalised study and its digest (detects a changed file)
    DIR/parts/<cell>.parquet one part per finished cell, written atomically
    DIR/results.parquet      the tidy table, one row per (cell, method, seed)
    DIR/results.csv          the same table as CSV

A run skips cells whose part exists, so a run killed at any moment (SIGKILL included)
and started again with the same command loses nothing and scores nothing twice.

With several processes (:mod:`cleverjax.distributed`) every process runs the same study:
all of them score every cell together (the simulations and the fit are data parallel
over the devices of all processes), process 0 alone reads and writes the folder, and
sends the others what it decided (the cells left to score) and the final table.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils
from jaxtyping import Array
from tqdm import tqdm

from .._cache import release_compiled_programs
from .._correction import (
    EmptyRowsWarning,
    _bias_correction,
    _class_blending,
    _cleverlabel,
    _soft,
    calibration_sample,
    estimate_class_matrix,
    sample_annotations,
)
from .._experiments import _ALL_METHODS
from .._metrics import _kl_exact, _kl_paper
from .._spa import propose, simulate_counts
from ..distributed import local_arrays
from .grid import Cell, cells, fold
from .spec import Study, StudyError

COLUMNS = (
    "truth",
    "images",
    "classes",
    "delta",
    "num_annotations",
    "calibration_images",
    "calibration_annotations",
    "empty_class_rows",
    "accuracy",
    "one_star",
    "mu",
    "method",
    "seed",
    "kl",
    "kl_exact",
    "delta_estimate",
    "delta_lower",
    "delta_upper",
    "converged",
    "seconds",
    "cell",
)
"""Columns of a study table. ``kl`` is the paper's clipped KL(gt || estimate), ``kl_exact``
the plain one (``inf`` where an estimate is 0 on a class the truth has), both means over
images; ``empty_class_rows`` counts the class-blending rows that no calibration image
filled (they get the fallback row); ``delta_*`` and ``converged`` only for methods that
estimate delta (Bayes); ``seconds`` is the wall time of the method (the closed-form
methods share their cell's)."""

_SETTINGS = ("delta", "num_annotations", "calibration_images", "calibration_annotations")


@jax.jit
def _scores(p, rho, biased, unbiased, matrix, true_delta, one_star, mu, bc_delta) -> Array:
    """(method, [paper KL, exact KL]) for the closed-form methods, in ``_ALL_METHODS`` order."""
    rho = rho.astype(jnp.result_type(int))  # argmax's dtype, which CB's row choice mixes in
    gt = _soft(unbiased)
    spa = _soft(biased)
    estimates = (
        gt,
        _class_blending(gt, matrix, mu),
        spa,
        _class_blending(spa, matrix, mu),
        _bias_correction(biased, rho, bc_delta, one_star),
        _cleverlabel(biased, rho, matrix, bc_delta, one_star, mu, None),
        _cleverlabel(biased, rho, matrix, true_delta, one_star, mu, None),
        _class_blending(spa, matrix, jnp.asarray(0.25, mu.dtype)),
    )
    return jnp.stack(
        [jnp.stack([jnp.mean(_kl_paper(p, e)), jnp.mean(_kl_exact(p, e))]) for e in estimates]
    )


class _Data(NamedTuple):
    rho: Array
    biased: Array
    unbiased: Array
    calibration_indices: Array
    calibration_counts: Array
    matrix: Array
    empty_rows: int


def _simulate(study: Study, cell: Cell, p: Array) -> _Data:
    """The cell's data; each draw's key folds in only the settings it depends on.

    With several processes the draws are data parallel over all their devices; each
    comes back to every process (:func:`cleverjax.distributed.local_arrays`), so that the
    rest of the cell (scores, checks, the fit's own sharding) sees local arrays."""
    key = jax.random.key(cell.seed)
    rho = propose(fold(key, "proposals", study.accuracy), p, accuracy=study.accuracy)
    rho = local_arrays(rho)
    cal = calibration_sample(
        fold(key, "calibration", cell.calibration_images, cell.calibration_annotations),
        p,
        num_images=cell.calibration_images,
        num_annotations=cell.calibration_annotations,
    )
    n = cell.num_annotations
    unbiased = sample_annotations(fold(key, "unbiased", n), p, num_annotations=n)
    biased = simulate_counts(
        fold(key, "biased", n, cell.delta),
        p,
        rho,
        num_annotations=n,
        delta=cell.delta,
        one_star=study.one_star,
    )
    cal, unbiased, biased = local_arrays((cal, unbiased, biased))
    # The table records the empty rows (a column), instead of a warning per cell.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyRowsWarning)
        matrix = estimate_class_matrix(cal.counts)
    filled = np.unique(np.argmax(np.asarray(cal.counts), axis=1)).size
    empty = int(np.asarray(cal.counts).shape[1] - filled)
    return _Data(rho, biased, unbiased, cal.indices, cal.counts, matrix, empty)


def _fit_row(study: Study, cell: Cell, p: Array, data: _Data) -> dict[str, Any]:
    import cleverjax

    start = time.perf_counter()
    unbiased = (
        jnp.zeros_like(data.biased)
        .at[data.calibration_indices]
        .set(data.calibration_counts.astype(data.biased.dtype))
    )
    key = fold(
        jax.random.key(cell.seed),
        "fit",
        cell.num_annotations,
        cell.delta,
        cell.calibration_images,
        cell.calibration_annotations,
    )
    # Simulated under SPA: the predictive check and the model checks have nothing to find;
    # the table holds no per-image intervals, so none are drawn.
    options = {
        "num_ppc_replicates": 0,
        "check_model": False,
        "num_interval_draws": 0,
        **study.options.get("Bayes", {}),
    }
    # Convergence is recorded in the table instead of warned about once per cell.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cleverjax.ConvergenceWarning)
        res = cleverjax.fit(
            key, data.biased, data.rho, unbiased_counts=unbiased, one_star=study.one_star, **options
        )
    estimate = jnp.asarray(res.posterior_mean, p.dtype)
    kl = float(jnp.mean(_kl_paper(p, estimate)))
    kl_exact = float(jnp.mean(_kl_exact(p, estimate)))
    return {
        "kl": kl,
        "kl_exact": kl_exact,
        "delta_estimate": float(res.delta),
        "delta_lower": float(res.delta_interval[0]),
        "delta_upper": float(res.delta_interval[1]),
        "converged": bool(res.converged),
        "seconds": time.perf_counter() - start,
    }


def score_cell(study: Study, cell: Cell, p: Array) -> pd.DataFrame:
    """Rows of one cell: one per method of the study, in the study's method order.

    Args:
        study: the study.
        cell: one of ``cells(study)``.
        p: the cell's truth as a device array.

    Returns:
        A table with :data:`COLUMNS`.
    """
    truth = study.truths[cell.truth]
    start = time.perf_counter()
    data = _simulate(study, cell, p)
    dtype = p.dtype
    bc_delta = study.options.get("CleverLabel", {}).get("delta", 0.1)
    closed = np.asarray(
        _scores(
            p,
            data.rho,
            data.biased,
            data.unbiased,
            data.matrix,
            jnp.asarray(cell.delta, dtype),
            jnp.asarray(study.one_star, dtype),
            jnp.asarray(study.mu, dtype),
            jnp.asarray(bc_delta, dtype),
        ),
        np.float64,
    )
    closed_seconds = time.perf_counter() - start
    rows = []
    for method in study.methods:
        if method == "Bayes":
            values = _fit_row(study, cell, p, data)
        else:
            kl, kl_exact = closed[_ALL_METHODS.index(method)]
            values = {
                "kl": kl,
                "kl_exact": kl_exact,
                "delta_estimate": np.nan,
                "delta_lower": np.nan,
                "delta_upper": np.nan,
                "converged": None,
                "seconds": closed_seconds,
            }
        rows.append(
            {
                "truth": truth.name,
                "images": truth.p.shape[0],
                "classes": truth.p.shape[1],
                "delta": cell.delta,
                "num_annotations": cell.num_annotations,
                "calibration_images": cell.calibration_images,
                "calibration_annotations": cell.calibration_annotations,
                "empty_class_rows": data.empty_rows,
                "accuracy": study.accuracy,
                "one_star": study.one_star,
                "mu": study.mu,
                "method": method,
                "seed": cell.seed,
                **values,
                "cell": cell.id,
            }
        )
    return _typed(pd.DataFrame(rows, columns=list(COLUMNS)))


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes, so that parts and tables compare equal however they were assembled."""
    ints = ("images", "classes", "num_annotations", "calibration_images", "empty_class_rows")
    ints += ("calibration_annotations", "seed")
    floats = ("delta", "accuracy", "one_star", "mu", "kl", "kl_exact")
    floats += ("delta_estimate", "delta_lower", "delta_upper", "seconds")
    return table.astype(
        {
            **{c: "int64" for c in ints},
            **{c: "float64" for c in floats},
            "converged": "boolean",
            "truth": "string",
            "method": "string",
            "cell": "string",
        }
    )


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _check_folder(study: Study, out: Path, force: bool) -> None:
    """Refuse a folder that holds results of a different study, unless forced."""
    record = out / "study.json"
    if not record.exists() or force:
        return
    try:
        old = json.loads(record.read_text())
        old_study, old_digest = old["study"], old["digest"]
    except (ValueError, KeyError, TypeError) as err:
        raise StudyError(
            f"{record}: not a study record ({err}); pass --force to overwrite"
        ) from err
    if old_digest != study.digest():
        new = study.normalised()
        changed = sorted(k for k in set(new) | set(old_study) if new.get(k) != old_study.get(k))
        raise StudyError(
            f"{out}: holds results of a different study ({study.source} changed "
            f"{', '.join(changed) or 'its content'}); pass --force to run it there anyway "
            f"(cells whose settings did not change are kept)"
        )


def ordered(table: pd.DataFrame, study: Study) -> pd.DataFrame:
    """The canonical order: cell settings (truths in file order), then method, then seed."""
    truth_rank = {t.name: i for i, t in enumerate(study.truths)}
    method_rank = {m: i for i, m in enumerate(study.methods)}
    keys = pd.DataFrame(
        {
            "_truth": table["truth"].map(truth_rank.__getitem__),
            **{s: table[s] for s in _SETTINGS},
            "_method": table["method"].map(method_rank.__getitem__),
            "_seed": table["seed"],
        }
    )
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return table.loc[order].reset_index(drop=True)


def _from_process_0(payload: bytes) -> bytes:
    """Process 0's ``payload`` on every process (a collective with several processes;
    the others' payloads are ignored)."""
    if jax.process_count() == 1:
        return payload
    size = multihost_utils.broadcast_one_to_all(np.int64(len(payload)))
    buffer = np.zeros(int(size), np.uint8)
    if jax.process_index() == 0:
        buffer[:] = np.frombuffer(payload, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(buffer), np.uint8).tobytes()


def _prepare_folder(study: Study, folder: Path, force: bool) -> list[str]:
    """Check and set up the folder; return the ids of the cells left to score (with
    several processes, process 0 does this and tells the others)."""
    answer: dict[str, Any] = {}
    if jax.process_index() == 0:
        try:
            _check_folder(study, folder, force)
        except StudyError as err:
            answer["error"] = str(err)
        else:
            parts = folder / "parts"
            parts.mkdir(parents=True, exist_ok=True)
            # Temporary files left by a run killed mid-write.
            for stale in [
                *parts.glob(".*.tmp"),
                *folder.glob(".results.*.tmp"),
                *folder.glob(".study.*.tmp"),
            ]:
                stale.unlink(missing_ok=True)
            record = {"digest": study.digest(), "source": study.source, "study": study.normalised()}
            _atomic(folder / "study.json", lambda f: f.write_text(json.dumps(record, indent=2)))
            grid = cells(study)
            answer["todo"] = [c.id for c in grid if not (parts / f"{c.id}.parquet").exists()]
    answer = json.loads(_from_process_0(json.dumps(answer).encode()))
    if "error" in answer:
        raise StudyError(answer["error"])
    return answer["todo"]


def run_study(
    study: Study, out: str | os.PathLike, *, force: bool = False, progress: bool = False
) -> pd.DataFrame:
    """Run a study into a folder, resuming where an earlier run stopped.

    Cells whose part file exists are skipped; each new cell's rows are written atomically
    as soon as they are scored; the final table is the concatenation of all parts in the
    canonical order (see :func:`ordered`), written atomically as Parquet and CSV. All
    randomness of a cell derives from its seed and settings, so the table equals that of
    an uninterrupted run (apart from the ``seconds`` column).

    Args:
        study: a checked study (:func:`load_study`).
        out: the study folder; created if needed.
        force: keyword-only; run even if the folder holds a different study (parts of
            cells whose settings are unchanged are reused).
        progress: keyword-only; a progress bar with cells done/total and the time left,
            on stderr.

    Returns:
        The table, with :data:`COLUMNS`.

    With several processes, every process calls it with the same arguments; process 0
    alone reads and writes ``out`` (which the others need not see), and every process
    returns the same table.

    Raises:
        StudyError: if ``out`` holds a different study and ``force`` is false.
    """
    folder = Path(out)
    parts = folder / "parts"
    writer = jax.process_index() == 0
    left = set(_prepare_folder(study, folder, force))
    grid = cells(study)
    todo = [c for c in grid if c.id in left]
    bar = tqdm(
        total=len(grid),
        initial=len(grid) - len(todo),
        desc=f"study {Path(study.source).name}",
        unit="cell",
        file=sys.stderr,
        disable=not (progress and writer),
    )
    on_device: dict[int, Array] = {}
    for cell in todo:
        release_compiled_programs()  # every cell's shapes compile programs of their own
        if cell.truth not in on_device:
            on_device[cell.truth] = jnp.asarray(study.truths[cell.truth].p, jnp.result_type(float))
        rows = score_cell(study, cell, on_device[cell.truth])
        if writer:
            _atomic(parts / f"{cell.id}.parquet", lambda f: rows.to_parquet(f, index=False))
        bar.update()
    bar.close()

    table = None
    if writer:
        frames = [pd.read_parquet(parts / f"{c.id}.parquet") for c in grid]
        table = ordered(_typed(pd.concat(frames, ignore_index=True)), study)
        _atomic(folder / "results.parquet", lambda f: table.to_parquet(f, index=False))
        _atomic(folder / "results.csv", lambda f: table.to_csv(f, index=False))
    if jax.process_count() == 1:
        return table
    payload = _from_process_0(b"" if table is None else table.to_parquet(index=False))
    return _typed(pd.read_parquet(io.BytesIO(payload)))
