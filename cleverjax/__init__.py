"""cleverjax: simulate, correct and infer the default effect of proposal-guided annotation."""

from ._presets import PRESETS as PRESETS
from ._presets import Preset as Preset
from ._presets import preset as preset
from ._presets import sample_ground_truth as sample_ground_truth
from ._spa import AnnotationBatch as AnnotationBatch
from ._spa import Annotators as Annotators
from ._spa import biased_distribution as biased_distribution
from ._spa import propose as propose
from ._spa import simulate_annotations as simulate_annotations
from ._spa import simulate_counts as simulate_counts
from ._spa import simulate_sweep as simulate_sweep

__version__ = "0.1.0"
