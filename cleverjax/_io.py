"""Former home of the readers and writers, now :mod:`cleverjax.io`; kept for imports."""

from .io import AnnotationTable as AnnotationTable
from .io import CountedTable as CountedTable
from .io import Counts as Counts
from .io import DCICOutput as DCICOutput
from .io import annotations_to_table as annotations_to_table
from .io import counts_to_table as counts_to_table
from .io import dcic_image_id as dcic_image_id
from .io import match_dcic_ids as match_dcic_ids
from .io import read_annotations as read_annotations
from .io import read_counts as read_counts
from .io import read_dcic_annotations as read_dcic_annotations
from .io import read_dcic_output as read_dcic_output
from .io import to_counts as to_counts
from .io import write_dcic_output as write_dcic_output
from .io import write_table as write_table
