"""Job body of the probes (rules/probe.smk): held-out linear probes on every layer's pooled
features of one pair, and the last layer's logistic probe as the LoRA head's start."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ntps.io import provenance, save_tensors
from ntps.layout import (
    HEAD_BIAS_KEY,
    HEAD_TEST_PREDICTIONS_KEY,
    HEAD_WEIGHT_KEY,
    N_LAYERS_KEY,
    feature_key,
    input_provenance,
    labels_key,
)
from ntps.probes import fit_probe

LOG = logging.getLogger("ntps")


def probe_pair(
    features_path: str | Path,
    n_classes: int,
    settings: Mapping[str, Any],
    out_head: str | Path | None = None,
) -> dict[str, Any]:
    """Held-out linear probes for every layer.

    With ``out_head`` the last layer's logistic probe, folded onto the raw pooled features, is saved
    there (``weight`` (c, d), ``bias`` (c,), ``test_predictions``): the LoRA head starts from it.
    """
    records = []
    started = time.perf_counter()
    # numpy, not torch: the features are float32 and the probes are scikit-learn's.
    with safe_open(str(features_path), framework="numpy") as handle:
        meta = handle.metadata()
        n_layers = int(meta[N_LAYERS_KEY])
        train_y = handle.get_tensor(labels_key("train"))
        test_y = handle.get_tensor(labels_key("test"))
        for layer in range(n_layers):
            result = fit_probe(
                handle.get_tensor(feature_key("train", layer)),
                train_y,
                handle.get_tensor(feature_key("test", layer)),
                test_y,
                n_classes,
                c_grid=settings["c_grid"],
                cv_folds=settings["cv_folds"],
                seed=settings["seed"],
                keep_head=out_head is not None and layer == n_layers - 1,
            )
            if result.head_weight is not None:
                save_tensors(
                    out_head,
                    {
                        HEAD_WEIGHT_KEY: result.head_weight.astype("float32"),
                        HEAD_BIAS_KEY: result.head_bias.astype("float32"),
                        HEAD_TEST_PREDICTIONS_KEY: result.test_predictions.astype("int64"),
                    },
                    {"layer": str(layer), "logistic_c": str(result.logistic_c), **meta},
                )
            records.append({"layer": layer, **result.to_dict()})
            LOG.info("layer %d: accuracy %.3f mse %.3f", layer, result.accuracy, result.mse)
    LOG.info("probed %d layers in %.1f s", n_layers, time.perf_counter() - started)
    return {
        "n_layers": n_layers,
        "settings": dict(settings),
        "records": records,
        "provenance": provenance(seed=settings["seed"], **input_provenance(meta)),
    }
