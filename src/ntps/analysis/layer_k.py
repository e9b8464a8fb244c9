"""A (layer, k) setting from its config specs: layer index, k label, a model's rows at it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntps.errors import ConfigError


def resolve_layer(spec: int | float, n_layers: int) -> int:
    """Layer index from a config spec; ``n_layers`` counts hidden-state layers (0 = embeddings).

    int: index, negative counts from the end (-1 = last); float in [0, 1]: fraction of depth,
    rounded half up to the nearest index (0.0 = embeddings, 1.0 = last).
    """
    if n_layers < 1:
        raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
    if isinstance(spec, bool) or not isinstance(spec, int | float | np.integer | np.floating):
        raise ConfigError(f"layer spec must be an int or a fraction in [0, 1], got {spec!r}")
    if isinstance(spec, int | np.integer):
        index = int(spec) + n_layers if spec < 0 else int(spec)
        if not 0 <= index < n_layers:
            raise ConfigError(
                f"layer {spec} is out of range for a model with {n_layers} hidden-state layers "
                f"(valid: {-n_layers}..{n_layers - 1})"
            )
        return index
    frac = float(spec)
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"fractional layer spec must be in [0, 1], got {spec}")
    return math.floor(frac * (n_layers - 1) + 0.5)


def k_label(k_spec: int | float) -> str:
    """Default label for a k spec: a fraction as "0.05", an integer count as "k=8"."""
    if isinstance(k_spec, int | np.integer) and not isinstance(k_spec, bool):
        return f"k={int(k_spec)}"
    value = float(k_spec)
    if value >= 1 and value.is_integer():
        return f"k={int(value)}"
    return f"{value:g}"


def rows_at_setting(
    scores: pd.DataFrame,
    model: str,
    layer_spec: int | float,
    k_spec: int | float,
    stage: str = "pre_lora",
) -> tuple[pd.DataFrame, int | None]:
    """One model's score rows at a (layer, k) given as config specs, and the resolved layer.

    The layer spec resolves against the model's own depth; (empty frame, None) when the model has
    no rows for ``stage``.
    """
    sub = scores[(scores["model"] == model) & (scores["stage"] == stage)]
    if sub.empty:
        return sub, None
    layer = resolve_layer(layer_spec, int(sub["layer"].max()) + 1)
    return sub[(sub["layer"] == layer) & (sub["k_label"] == k_label(k_spec))], layer
