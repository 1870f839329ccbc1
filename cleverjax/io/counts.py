"""Dense arrays: per-task counts from a table, and long tables from counts or labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._checks import ArrayIn
from .tables import check_names
from .types import AnnotationTable, Counts


def to_counts(table: AnnotationTable) -> Counts:
    """Per-task class counts of an annotation table, split by whether a proposal was shown.

    Args:
        table: an :class:`AnnotationTable` from :func:`read_annotations`.

    Returns:
        :class:`Counts` with ``biased`` and ``unbiased`` of shape ``(tasks, classes)``
        (int32) and ``proposals`` of shape ``(tasks,)``, ``-1`` where never shown.

    Examples:
        >>> import pandas as pd, cleverjax as cj
        >>> df = pd.DataFrame({"task": ["a", "a", "a", "b"], "worker": ["1", "2", "3", "1"],
        ...                    "label": ["cat", "cat", "dog", "dog"],
        ...                    "proposal": ["cat", "cat", "", ""]})
        >>> c = cj.to_counts(cj.read_annotations(df))
        >>> c.biased.tolist(), c.unbiased.tolist(), c.proposals.tolist()
        ([[2, 0], [0, 0]], [[0, 1], [0, 1]], [0, -1])
    """
    if not isinstance(table, AnnotationTable):
        raise TypeError(
            "`table` must be an AnnotationTable (from read_annotations); "
            f"got {type(table).__name__}"
        )
    n, k = len(table.tasks), len(table.classes)
    task = np.asarray(table.task, np.int64)
    label = np.asarray(table.label, np.int64)
    proposal = np.asarray(table.proposal, np.int64)
    shown = proposal >= 0
    flat = task * k + label
    biased = np.bincount(flat[shown], minlength=n * k).reshape(n, k)
    unbiased = np.bincount(flat[~shown], minlength=n * k).reshape(n, k)
    proposals = np.full(n, -1, np.int64)
    proposals[task[shown]] = proposal[shown]  # one proposal per task, checked on reading
    return Counts(
        biased=biased.astype(np.int32),
        unbiased=unbiased.astype(np.int32),
        proposals=proposals.astype(np.int32),
        tasks=tuple(table.tasks),
        classes=tuple(table.classes),
    )


def _int_array(name: str, x: Any, ndim: int) -> np.ndarray:
    """An int64 array of ``ndim`` dimensions; floats must be whole numbers."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be an array of integers; got {type(x).__name__}")
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s); got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"`{name}` must hold whole numbers; got {a[where]:g} at index "
                f"{where[0] if ndim == 1 else where} ({int(bad.sum())} such entries)"
            )
    elif not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        raise TypeError(f"`{name}` must hold integers; got dtype {a.dtype}")
    return a.astype(np.int64)


def _at_least(name: str, a: np.ndarray, lo: int, what: str) -> None:
    bad = a < lo
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` must be {what}; got {int(a[where])} at index "
            f"{where[0] if a.ndim == 1 else where} ({int(bad.sum())} such entries)"
        )


def _count_matrix(name: str, counts: Any) -> np.ndarray:
    c = _int_array(name, counts, 2)
    _at_least(name, c, 0, "non-negative counts")
    return c


def _names_or_default(name: str, names: Sequence[str] | None, size: int) -> np.ndarray:
    out = [str(i) for i in range(size)] if names is None else check_names(name, names, size)
    return np.asarray(out, dtype=object)


def _proposal_vector(proposals: ArrayIn | None, n: int, k: int) -> np.ndarray:
    if proposals is None:
        return np.full(n, -1, np.int64)
    rho = _int_array("proposals", proposals, 1)
    if rho.shape[0] != n:
        raise ValueError(f"`proposals` must have shape ({n},), one per task; got {rho.shape}")
    _at_least("proposals", rho, -1, "class indices or -1 (no proposal)")
    if (rho >= k).any():
        i = int(np.argmax(rho >= k))
        raise ValueError(
            f"`proposals` must be class indices in [0, {k}) or -1; got {int(rho[i])} at index {i}"
        )
    return rho


def counts_to_table(
    counts: ArrayIn,
    proposals: ArrayIn | None = None,
    *,
    tasks: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    worker_prefix: str = "w",
) -> pd.DataFrame:
    """Expand a counts matrix into a long annotation table (one row per annotation).

    Task ``i``'s annotations are listed class by class; the ``j``-th is made by worker
    ``f"{worker_prefix}{j}"``. Reading the table back with :func:`read_annotations` and
    :func:`to_counts` returns ``counts`` (as ``biased`` when proposals are given, else as
    ``unbiased``) provided every task has an annotation and every class is used; give
    ``classes=`` to :func:`read_annotations` to keep unused classes.

    Args:
        counts: ``(tasks, classes)`` non-negative integer counts.
        proposals: ``(tasks,)`` class index shown with each task, ``-1`` for none; default
            none.
        tasks: keyword-only; task names (default ``"0"``, ``"1"``, ...).
        classes: keyword-only; class names (default ``"0"``, ``"1"``, ...).
        worker_prefix: keyword-only; prefix of the worker names.

    Returns:
        A DataFrame with text columns ``task``, ``worker``, ``label`` and ``proposal``
        (``""`` where no proposal was shown).

    Raises:
        ValueError: on negative or non-integer counts, proposals outside ``[-1, classes)``,
            or names of the wrong number.

    Examples:
        >>> import numpy as np, cleverjax as cj
        >>> df = cj.counts_to_table(np.array([[2, 0], [0, 1]]), np.array([0, -1]),
        ...                         classes=["cat", "dog"])
        >>> df.values.tolist()
        [['0', 'w0', 'cat', 'cat'], ['0', 'w1', 'cat', 'cat'], ['1', 'w0', 'dog', '']]
        >>> c = cj.to_counts(cj.read_annotations(df))
        >>> c.biased.tolist(), c.unbiased.tolist()
        ([[2, 0], [0, 0]], [[0, 0], [0, 1]])
    """
    c = _count_matrix("counts", counts)
    n, k = c.shape
    rho = _proposal_vector(proposals, n, k)
    task_names = _names_or_default("tasks", tasks, n)
    class_names = _names_or_default("classes", classes, k)
    per_task = c.sum(axis=1)
    task_idx = np.repeat(np.arange(n), per_task)
    label_idx = np.repeat(np.tile(np.arange(k), n), c.reshape(-1))
    slot = np.arange(task_idx.shape[0]) - np.repeat(np.cumsum(per_task) - per_task, per_task)
    return _long_table(task_names, task_idx, slot, label_idx, rho, class_names, worker_prefix)


def _long_table(
    task_names: np.ndarray,
    task_idx: np.ndarray,
    worker_ids: np.ndarray,
    label_idx: np.ndarray,
    rho: np.ndarray,
    class_names: np.ndarray,
    worker_prefix: str,
) -> pd.DataFrame:
    with_none = np.concatenate([np.asarray([""], dtype=object), class_names])
    workers = worker_prefix + pd.Series(worker_ids, dtype=np.int64).astype(str)
    return pd.DataFrame(
        {
            "task": pd.array(task_names[task_idx], dtype="str"),
            "worker": pd.array(workers.to_numpy(dtype=object), dtype="str"),
            "label": pd.array(class_names[label_idx], dtype="str"),
            "proposal": pd.array(with_none[rho[task_idx] + 1], dtype="str"),
        }
    )


def annotations_to_table(
    labels: ArrayIn,
    proposals: ArrayIn | None = None,
    *,
    workers: ArrayIn | None = None,
    tasks: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    worker_prefix: str = "w",
) -> pd.DataFrame:
    """A long annotation table from per-slot labels, as :func:`cleverjax.simulate_annotations`
    returns them.

    Rows follow the tasks, then the slots; slots holding ``-1`` (no annotation) are left
    out. Worker names are ``f"{worker_prefix}{id}"``. When one worker annotates a task
    twice with the same label (a pool smaller than the annotations per task),
    :func:`read_annotations` reports the repeat as an exact duplicate.

    Args:
        labels: ``(tasks, slots)`` class indices, ``-1`` where a slot holds no annotation.
        proposals: ``(tasks,)`` class index shown with each task, ``-1`` for none; default
            none.
        workers: keyword-only; ``(tasks, slots)`` annotator ids (e.g.
            ``AnnotationBatch.worker``); default: the slot index.
        tasks: keyword-only; task names (default ``"0"``, ``"1"``, ...).
        classes: keyword-only; class names (default ``"0"``, ... up to the largest label
            or proposal).

    Returns:
        A DataFrame with text columns ``task``, ``worker``, ``label`` and ``proposal``.

    Raises:
        ValueError: on labels or proposals outside ``[-1, classes)``, a missing worker id
            for an annotation, or shapes that disagree.

    Examples:
        >>> import numpy as np, cleverjax as cj
        >>> df = cj.annotations_to_table(np.array([[1, 0, -1], [1, -1, -1]]), np.array([1, 1]))
        >>> df.values.tolist()
        [['0', 'w0', '1', '1'], ['0', 'w1', '0', '1'], ['1', 'w0', '1', '1']]
    """
    lab = _int_array("labels", labels, 2)
    n = lab.shape[0]
    _at_least("labels", lab, -1, "class indices or -1 (no annotation)")
    rho_in = None if proposals is None else _int_array("proposals", proposals, 1)
    if classes is not None:
        k = len(check_names("classes", classes))
    else:
        top = [int(lab.max()) if lab.size else -1]
        if rho_in is not None and rho_in.size:
            top.append(int(rho_in.max()))
        k = max(top) + 1
    if (lab >= k).any():
        where = tuple(int(i) for i in np.argwhere(lab >= k)[0])
        raise ValueError(
            f"`labels` must be class indices in [0, {k}) or -1; got {int(lab[where])} at "
            f"(task, slot) {where}"
        )
    rho = _proposal_vector(rho_in, n, k)
    task_names = _names_or_default("tasks", tasks, n)
    class_names = _names_or_default("classes", classes, k)
    task_idx, slot = np.nonzero(lab >= 0)
    if workers is None:
        worker_ids = slot
    else:
        w = _int_array("workers", workers, 2)
        if w.shape != lab.shape:
            raise ValueError(
                f"`workers` must have the shape of `labels`, {lab.shape}; got {w.shape}"
            )
        worker_ids = w[task_idx, slot]
        if (worker_ids < 0).any():
            i = int(np.argmax(worker_ids < 0))
            raise ValueError(
                f"`workers` must be >= 0 where `labels` holds an annotation; got "
                f"{int(worker_ids[i])} at (task, slot) ({int(task_idx[i])}, {int(slot[i])})"
            )
    return _long_table(
        task_names, task_idx, worker_ids, lab[task_idx, slot], rho, class_names, worker_prefix
    )
