"""Statistics behind the NTPS claims: rank correlations, uncertainty, honest layer/k selection.

Everything here is a pure function of numpy arrays or tidy pandas frames (no file I/O), in modules
along its seams:

* :mod:`~ntps.analysis.ranks`: Spearman rho and Kendall tau-b, scalar and row-wise (many pairs at
  once); :mod:`~ntps.analysis.resampling`: bootstrap CIs and permutation p-values of them;
* :mod:`~ntps.analysis.layer_k`: a (layer, k) setting from its config specs;
  :mod:`~ntps.analysis.pairing`: scores paired with a target metric, as (layer, k) x dataset grids;
  :mod:`~ntps.analysis.selection`: correlations per setting and the fixed / in-sample /
  leave-one-dataset-out choice of a setting;
* :mod:`~ntps.analysis.prediction`: LoRA gain predicted from NTPS, NTPS before vs after LoRA;
  :mod:`~ntps.analysis.checks`: NTPS against its random baseline and the excess-loss bounds.

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
"""

from __future__ import annotations

import importlib
from typing import Any

# The public names of each module. A module is imported when one of its names is first used:
# the summary job needs two small modules of the seven, and every module costs job start-up.
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
    "selection": ("correlation_grid", "lodo_scores", "select_layer_k"),
    "prediction": ("GainPrediction", "paired_change", "predict_gain_lodo"),
    "checks": ("baseline_position", "bound_check"),
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
