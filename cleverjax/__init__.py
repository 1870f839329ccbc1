"""cleverjax: simulate, correct and infer the default effect of proposal-guided annotation."""

from . import _cache
from . import distributed as distributed
from ._correction import Calibration as Calibration
from ._correction import DeltaEstimate as DeltaEstimate
from ._correction import EmptyRowsWarning as EmptyRowsWarning
from ._correction import bias_correction as bias_correction
from ._correction import calibration_images_to_fill as calibration_images_to_fill
from ._correction import calibration_sample as calibration_sample
from ._correction import class_blending as class_blending
from ._correction import cleverlabel as cleverlabel
from ._correction import estimate_class_matrix as estimate_class_matrix
from ._correction import estimate_delta as estimate_delta
from ._correction import sample_annotations as sample_annotations
from ._correction import soft_labels as soft_labels
from ._errors import CleverjaxError as CleverjaxError
from ._errors import InputError as InputError
from ._experiments import FIGURE3_METHODS as FIGURE3_METHODS
from ._experiments import TABLE2_METHODS as TABLE2_METHODS
from ._experiments import Figure3 as Figure3
from ._experiments import Finding as Finding
from ._experiments import budget_curves as budget_curves
from ._experiments import check_findings as check_findings
from ._experiments import figure3 as figure3
from ._io import AnnotationTable as AnnotationTable
from ._io import CountedTable as CountedTable
from ._io import Counts as Counts
from ._io import DCICOutput as DCICOutput
from ._io import annotations_to_table as annotations_to_table
from ._io import counts_to_table as counts_to_table
from ._io import dcic_image_id as dcic_image_id
from ._io import match_dcic_ids as match_dcic_ids
from ._io import read_annotations as read_annotations
from ._io import read_counts as read_counts
from ._io import read_dcic_annotations as read_dcic_annotations
from ._io import read_dcic_output as read_dcic_output
from ._io import to_counts as to_counts
from ._io import write_dcic_output as write_dcic_output
from ._io import write_table as write_table
from ._metrics import Guideline as Guideline
from ._metrics import annotation_guideline as annotation_guideline
from ._metrics import budget as budget
from ._metrics import kl_divergence as kl_divergence
from ._plotting import plot_figure3 as plot_figure3
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
from .bayes import AnnotatorFit as AnnotatorFit
from .bayes import CalibrationPlan as CalibrationPlan
from .bayes import ConvergenceWarning as ConvergenceWarning
from .bayes import DeltaPosterior as DeltaPosterior
from .bayes import FitResult as FitResult
from .bayes import IdentifiabilityWarning as IdentifiabilityWarning
from .bayes import PosteriorPredictive as PosteriorPredictive
from .bayes import Prior as Prior
from .bayes import StageSeconds as StageSeconds
from .bayes import default_adam as default_adam
from .bayes import exact_delta_posterior as exact_delta_posterior
from .bayes import fit as fit
from .bayes import fit_annotators as fit_annotators
from .bayes import plan_calibration as plan_calibration
from .bayes import spa_model as spa_model
from .bayes import spa_model_uncollapsed as spa_model_uncollapsed

__version__ = "0.1.0"

_compilation_cache = _cache.configure_compilation_cache()
