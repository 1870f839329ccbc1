"""Annotation data in and out: long tables (CSV, Parquet, DataFrames) and DCIC's JSON files.

A *long annotation table* has one row per annotation and the columns ``task``, ``worker``
and ``label`` (crowd-kit's convention), plus an optional ``proposal``: the class shown to
the annotator, empty when none was shown. :func:`read_annotations` validates such a table
and encodes it as integer indices (:class:`AnnotationTable`); :func:`to_counts` turns it
into the dense per-task class counts that the rest of the package works on
(:func:`cleverjax.soft_labels` turns them into label distributions). :func:`read_counts`
goes from a Parquet file or folder straight to counts, batch by batch, for tables too
large to hold in memory. :func:`counts_to_table` and :func:`annotations_to_table` go the
other way, from simulated arrays to a long table that :func:`write_table` saves as CSV or
Parquet.

Every problem in a file is reported with the file, the row and the column. Nothing is
dropped silently: with ``on_error="skip"`` the rows that are not used are listed in
``rejected``, and ``num_rows_read == num_annotations + len(rejected)``.

The DCIC benchmark (Schmarje et al., 2022) stores raw annotations as a JSON list of
annotation sets (:func:`read_dcic_annotations`) and each fold's result as one JSON file
(:func:`write_dcic_output`, :func:`read_dcic_output`).

Modules, one per format: :mod:`.tables` (long tables), :mod:`.counts` (dense arrays),
:mod:`.stream` (out-of-core counts), :mod:`.dcic` (the benchmark's files); :mod:`.encode`
holds the validation passes they share and :mod:`.cells` the parsing of cells.
"""

from .counts import annotations_to_table as annotations_to_table
from .counts import counts_to_table as counts_to_table
from .counts import to_counts as to_counts
from .dcic import DCICOutput as DCICOutput
from .dcic import dcic_image_id as dcic_image_id
from .dcic import match_dcic_ids as match_dcic_ids
from .dcic import read_dcic_annotations as read_dcic_annotations
from .dcic import read_dcic_output as read_dcic_output
from .dcic import write_dcic_output as write_dcic_output
from .stream import CountedTable as CountedTable
from .stream import read_counts as read_counts
from .tables import OnError as OnError
from .tables import PathIn as PathIn
from .tables import read_annotations as read_annotations
from .tables import write_table as write_table
from .types import AnnotationTable as AnnotationTable
from .types import Counts as Counts
