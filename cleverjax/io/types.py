"""Result types of the readers: an encoded long table and per-task counts."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from jaxtyping import Int


class AnnotationTable(NamedTuple):
    """A validated long annotation table, encoded as integer indices.

    Attributes:
        task: ``(annotations,)`` int32 index into ``tasks`` of each annotation.
        worker: ``(annotations,)`` int32 index into ``workers``.
        label: ``(annotations,)`` int32 index into ``classes`` of the chosen class.
        proposal: ``(annotations,)`` int32 index into ``classes`` of the class shown,
            ``-1`` where no proposal was shown.
        tasks: task names in index order (order of first appearance).
        workers: worker names in index order (order of first appearance).
        classes: class names in index order.
        rejected: the rows that were not used, one per row, with columns ``row`` (the
            row's number as described in :func:`read_annotations`), ``column``, ``value``
            (the offending cell as text) and ``reason``.
        source: the path read, or ``"<DataFrame>"``.
    """

    task: Int[np.ndarray, " annotations"]
    worker: Int[np.ndarray, " annotations"]
    label: Int[np.ndarray, " annotations"]
    proposal: Int[np.ndarray, " annotations"]
    tasks: tuple[str, ...]
    workers: tuple[str, ...]
    classes: tuple[str, ...]
    rejected: pd.DataFrame
    source: str

    @property
    def num_annotations(self) -> int:
        """Number of annotations used."""
        return int(self.label.shape[0])

    @property
    def num_rows_read(self) -> int:
        """Rows read from the source: annotations used plus rows rejected."""
        return self.num_annotations + len(self.rejected)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_frame(self) -> pd.DataFrame:
        """The used annotations as a long table of names (``proposal`` is ``""`` if none)."""
        proposal = np.asarray(("",) + self.classes, dtype=object)[self.proposal + 1]
        return pd.DataFrame(
            {
                "task": np.asarray(self.tasks, dtype=object)[self.task],
                "worker": np.asarray(self.workers, dtype=object)[self.worker],
                "label": np.asarray(self.classes, dtype=object)[self.label],
                "proposal": proposal,
            }
        )


class Counts(NamedTuple):
    """Per-task class counts, split by whether a proposal was shown (see :func:`to_counts`).

    Attributes:
        biased: ``(tasks, classes)`` int32 counts of annotations made with a proposal shown.
        unbiased: ``(tasks, classes)`` int32 counts of annotations made without a proposal.
        proposals: ``(tasks,)`` int32 class shown with each task, ``-1`` if never shown.
        tasks: task names in row order.
        classes: class names in column order.
    """

    biased: Int[np.ndarray, "tasks classes"]
    unbiased: Int[np.ndarray, "tasks classes"]
    proposals: Int[np.ndarray, " tasks"]
    tasks: tuple[str, ...]
    classes: tuple[str, ...]
