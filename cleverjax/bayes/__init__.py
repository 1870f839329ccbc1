"""The Bayesian SPA model, by stage.

- :mod:`~cleverjax.bayes.data`: validation, merging identical images, padded shapes;
- :mod:`~cleverjax.bayes.likelihood`: the exact collapsed likelihood;
- :mod:`~cleverjax.bayes.model`: NumPyro model functions and the quadrature ELBO;
- :mod:`~cleverjax.bayes.optimize`: L-BFGS and first-order SVI;
- :mod:`~cleverjax.bayes.posterior`: per-image posterior summaries and predictive checks;
- :mod:`~cleverjax.bayes.fitting`: the :func:`fit` pipeline;
- :mod:`~cleverjax.bayes.checks`: model checks of the parts of SPA a fit cannot see;
- :mod:`~cleverjax.bayes.compare`: choosing a model variant by cross-validation;
- :mod:`~cleverjax.bayes.exact`, :mod:`~cleverjax.bayes.plan`,
  :mod:`~cleverjax.bayes.annotators`: the exact path, calibration planning and the
  per-annotator model.
"""

from .annotators import AnnotatorFit as AnnotatorFit
from .annotators import fit_annotators as fit_annotators
from .checks import ModelCheck as ModelCheck
from .checks import ModelCheckWarning as ModelCheckWarning
from .checks import model_checks as model_checks
from .checks import warn_failed as warn_failed
from .compare import ModelComparison as ModelComparison
from .compare import compare_models as compare_models
from .compare import compare_rejection as compare_rejection
from .exact import DeltaPosterior as DeltaPosterior
from .exact import exact_delta_posterior as exact_delta_posterior
from .fitting import FitResult as FitResult
from .fitting import IdentifiabilityWarning as IdentifiabilityWarning
from .fitting import StageSeconds as StageSeconds
from .fitting import fit as fit
from .likelihood import Prior as Prior
from .model import spa_model as spa_model
from .model import spa_model_uncollapsed as spa_model_uncollapsed
from .optimize import ConvergenceWarning as ConvergenceWarning
from .optimize import default_adam as default_adam
from .plan import CalibrationPlan as CalibrationPlan
from .plan import plan_calibration as plan_calibration
from .posterior import PosteriorPredictive as PosteriorPredictive
