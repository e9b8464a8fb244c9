"""Exception types with messages meant for researchers, not stack-trace readers."""

from __future__ import annotations


class NTPSError(Exception):
    """Base class: every error the workflow raises on purpose."""


class ConfigError(NTPSError):
    """The configuration is invalid; the message names the offending key."""


class DatasetError(NTPSError):
    """A dataset cannot be read or does not have the expected shape; names dataset and column."""


class ModelSourceError(NTPSError):
    """A model source cannot be resolved or loaded; names the model and suggests alternatives."""


class NumericalError(NTPSError):
    """Non-finite values or a degenerate problem; names the layer and suggests a fix."""


class PredictorUndefined(NumericalError):
    """A transferability predictor has no finite value on these features (e.g. LogME's evidence is
    unbounded); the message is the reason, recorded beside a NaN value by the predictors job."""
