"""Statistics behind the NTPS claims: rank correlations, uncertainty, honest layer/k selection, and
the study-level evidence (target noise, pooled and across-model views, incremental validity, power).

Everything here is a pure function of numpy arrays or tidy pandas frames (no file I/O), in modules
along its seams:

* :mod:`~ntps.analysis.ranks`: Spearman rho and Kendall tau-b, scalar and row-wise (many pairs at
  once); :mod:`~ntps.analysis.resampling`: bootstrap CIs and permutation p-values of them;
* :mod:`~ntps.analysis.layer_k`: a (layer, k) setting from its config specs;
  :mod:`~ntps.analysis.pairing`: scores paired with a target metric, as (layer, k) x dataset grids;
  :mod:`~ntps.analysis.selection`: correlations per setting, the fixed / in-sample /
  leave-one-dataset-out choice of a setting, and the (score, target) pairs each choice gives;
* :mod:`~ntps.analysis.prediction`: LoRA gain predicted from NTPS, NTPS before vs after LoRA;
  :mod:`~ntps.analysis.checks`: NTPS against its random baseline and the excess-loss bounds;
* the study-level evidence: :mod:`~ntps.analysis.uncertainty` (the targets' standard errors, a
  CI carrying measurement error), :mod:`~ntps.analysis.pooled` (within-model rhos pooled over
  models, one rho over all pairs), :mod:`~ntps.analysis.across` (tau across models, per dataset),
  :mod:`~ntps.analysis.incremental` (what a predictor adds beyond a baseline) and
  :mod:`~ntps.analysis.power` (the smallest detectable correlation, a CI's reading).

Every public name is re-exported here (``from ntps.analysis import spearman``).

Conventions
-----------
* Correlations are taken across datasets (one point per dataset) for one model.
* ``sign`` flips a target so that "higher is better for the claim": the paper expects NTPS to rise
  with probe accuracy, and to fall with probe MSE and with LoRA gain, so targets are
  ``accuracy`` (sign +1), ``-mse`` and ``-gain`` (sign -1). Every correlation is then expected > 0.
* Pairing with targets (see :func:`pair_with_target`): a target table with a ``layer`` column
  (linear probes) is matched to NTPS of the SAME layer, as the paper correlates NTPS at layer l with
  the probe fitted on layer l; a target table without ``layer`` (LoRA gain, one number per
  model/dataset) is matched to every layer's NTPS.

Study-level frames
------------------
The study-level functions take the frames the study already builds: one row per (model, dataset)
with a predictor column and a target column, by default ``score`` and ``target`` as
:func:`pair_with_target` and :func:`lodo_scores` name them. Targets are already signed, so a
positive correlation is always the claim. :func:`selected_pairs` gives those rows for the three
selection modes exactly as :func:`select_layer_k` correlates them. The ``*_table`` functions group
a frame by key columns (target, mode, predictor, ...) and return one row per group, ready to be
written as a table. Resampling units are datasets throughout: the models of a study share their
datasets, so a bootstrap draws one set of dataset indices and applies it to every model.
"""

from __future__ import annotations

import importlib
from typing import Any

# The public names of each module. A module is imported when one of its names is first used:
# a job imports only the modules it needs, and every module costs job start-up.
_PUBLIC = {
    "ranks": (
        "Statistic",
        "average_ranks",
        "kendall",
        "kendall_rows",
        "pearson_rows",
        "spearman",
        "spearman_rows",
    ),
    "resampling": ("ALTERNATIVES", "BootstrapCI", "bootstrap_ci", "permutation_pvalue"),
    "layer_k": ("k_label", "resolve_layer", "rows_at_setting"),
    "pairing": ("pair_with_target",),
    "selection": (
        "SELECTED_COLUMNS",
        "correlation_grid",
        "lodo_scores",
        "select_layer_k",
        "selected_pairs",
    ),
    "prediction": ("GainPrediction", "paired_change", "predict_gain_lodo"),
    "checks": ("baseline_position", "bound_check"),
    "uncertainty": (
        "NOISE_MULTIPLE",
        "accuracy_se",
        "error_bootstrap_ci",
        "gain_uncertainty",
        "gain_within_noise",
        "mean_se",
        "paired_bootstrap_gain_se",
    ),
    "pooled": (
        "pooled_all_pairs",
        "pooled_all_pairs_table",
        "pooled_within_model",
        "pooled_within_model_table",
    ),
    "across": (
        "MIN_MODELS_ACROSS",
        "PER_DATASET_COLUMNS",
        "AcrossModels",
        "across_models",
        "across_models_table",
        "weighted_tau",
    ),
    "incremental": (
        "INCREMENTAL_PREDICTION_COLUMNS",
        "incremental_validity",
        "incremental_validity_table",
        "lodo_incremental_prediction",
        "partial_spearman",
    ),
    "power": (
        "DETECTABLE_ALPHA",
        "USEFUL_RHO",
        "evidence_line",
        "min_detectable_correlation",
        "read_correlation",
        "useful_tau",
        "with_power_columns",
    ),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
