"""Job body of the predictors (rules/predictors.smk): every enabled transferability baseline on
every layer's cached train features of one pair, each timed (NTPS is timed in the score job,
:func:`ntps.stages.score.score_pair`).

The estimators are :mod:`ntps.baselines`'; the study-level tables and their judgement beside NTPS
are :mod:`ntps.predictors`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from ntps.baselines import predictor_value, preload
from ntps.errors import NTPSError, NumericalError
from ntps.io import provenance
from ntps.layout import N_LAYERS_KEY, feature_key, input_provenance, labels_key

LOG = logging.getLogger("ntps")


def predictors_pair(
    features_path: str | Path,
    n_classes: int,
    settings: Mapping[str, Mapping[str, Any]],
    where: str = "",
) -> dict[str, Any]:
    """Every predictor in ``settings`` on every layer's cached TRAIN features of one pair.

    ``settings`` maps predictor name -> keyword arguments (:func:`ntps.workflow.predictor_settings`). Each
    predictor's compute time over all layers is recorded under ``seconds`` (features already in
    memory; the time to read them is ``load_seconds``); NTPS's, measured the same way, is in the
    score JSON. ``where`` ("model x dataset") prefixes error messages.
    """
    preload()
    records: list[dict[str, Any]] = []
    seconds = dict.fromkeys(settings, 0.0)
    load_seconds = 0.0
    with safe_open(str(features_path), framework="pt") as handle:
        meta = handle.metadata()
        n_layers = int(meta[N_LAYERS_KEY])
        labels = handle.get_tensor(labels_key("train")).numpy()
        hidden_size = 0
        for layer in range(n_layers):
            started = time.perf_counter()
            x = handle.get_tensor(feature_key("train", layer)).numpy().astype(np.float64)
            load_seconds += time.perf_counter() - started
            hidden_size = int(x.shape[1])
            for name, kwargs in settings.items():
                started = time.perf_counter()
                try:
                    value, reason = predictor_value(name, x, labels, n_classes, **kwargs)
                except NTPSError as exc:
                    raise type(exc)(f"{where}: predictor {name!r}, layer {layer}: {exc}") from exc
                except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
                    raise NumericalError(
                        f"{where}: predictor {name!r} failed on layer {layer} "
                        f"({type(exc).__name__}: {exc}); check the layer's features in "
                        f"{features_path}"
                    ) from exc
                seconds[name] += time.perf_counter() - started
                record = {"layer": layer, "predictor": name, "value": value}
                if reason is not None:
                    # Undefined here (e.g. LogME's evidence unbounded): NaN (null) and why.
                    record["reason"] = reason
                    LOG.warning(
                        "%s: predictor %r undefined on layer %d: %s", where, name, layer, reason
                    )
                records.append(record)
    for name, spent in seconds.items():
        LOG.info("%s: %d layers in %.3f s", name, n_layers, spent)
    return {
        "n_layers": n_layers,
        "n_train": int(labels.shape[0]),
        "hidden_size": hidden_size,
        "n_classes": n_classes,
        "predictors": list(settings),
        "settings": {name: dict(kwargs) for name, kwargs in settings.items()},
        "records": records,
        "seconds": seconds,
        "load_seconds": load_seconds,
        "provenance": provenance(**input_provenance(meta)),
    }
