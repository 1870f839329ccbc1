"""Cells of a study: one per (truth, delta, N, calibration settings, seed), with stable ids."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import NamedTuple

import jax
from jaxtyping import PRNGKeyArray

from .spec import Study


class Cell(NamedTuple):
    """One cell of the grid; every method of the study is scored on it.

    Attributes:
        truth: index into ``Study.truths``.
        delta: true acceptance offset.
        num_annotations: annotations per image N.
        calibration_images: calibration images.
        calibration_annotations: unbiased annotations per calibration image.
        seed: replicate seed.
        id: hex digest of everything that determines the cell's numbers.
    """

    truth: int
    delta: float
    num_annotations: int
    calibration_images: int
    calibration_annotations: int
    seed: int
    id: str


def cells(study: Study) -> list[Cell]:
    """All cells of a study, in the canonical order of the final table.

    The id hashes the cell's settings together with everything else that changes its
    rows (truth name and digest, accuracy, 1*, mu, methods and their options), so a part file
    written for an id is valid for any study that produces that id.
    """
    shared = {
        "accuracy": study.accuracy,
        "one_star": study.one_star,
        "mu": study.mu,
        "methods": list(study.methods),
        "options": study.normalised()["options"],
    }
    out = []
    for t, d, n, ci, ca, s in itertools.product(
        range(len(study.truths)),
        sorted(study.deltas),
        sorted(study.annotations),
        sorted(study.calibration_images),
        sorted(study.calibration_annotations),
        sorted(study.seeds),
    ):
        settings = {
            **shared,
            "truth": [study.truths[t].name, study.truths[t].digest],
            "delta": d,
            "num_annotations": n,
            "calibration_images": ci,
            "calibration_annotations": ca,
            "seed": s,
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        out.append(Cell(t, d, n, ci, ca, s, digest[:24]))
    return out


def fold(key: PRNGKeyArray, *parts: object) -> PRNGKeyArray:
    """Fold stable 31-bit hashes of ``parts`` into ``key``.

    A cell's keys depend on its seed and settings only, never on its position in a run,
    so a resumed run draws the same numbers as an uninterrupted one.
    """
    for part in parts:
        word = hashlib.sha256(repr(part).encode()).digest()[:4]
        key = jax.random.fold_in(key, int.from_bytes(word, "little") & 0x7FFFFFFF)
    return key
