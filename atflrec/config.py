"""One configuration system: pydantic models, loaded from YAML, with ``key=value`` overrides.

Every stage declares its settings as a :class:`StrictModel`. ``load_config`` reads an optional
YAML file, applies dotted command-line overrides (``synth.users=200``), and validates. An unknown
key or a bad value raises :class:`ConfigError` whose message names the dotted key and the problem.

Shipped configs live in the package (``atflrec/configs/``) and are named by their path there without
the suffix (``train/cpu``, ``deepspeed/zero2_cpu``); :func:`find_config` turns a name or a path into
the file, and a :data:`ConfigRef` field (a config that names another one) holds either.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from atflrec.errors import UserError

M = TypeVar("M", bound=BaseModel)
CONFIG_SUFFIXES = (".yaml", ".json")
RELATIVE_TO = "relative_to"  # validation context: the directory of the file being validated
# The type of a validation error whose input must never be echoed (it holds a credential).
SECRET_ERROR = "contains_secret"


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the offending key."""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for problem in err.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "<root>"
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = problem["msg"]
            # At the root the input is the whole config: echoing it would bury the message.
            if "input" in problem and problem["type"] not in ("missing", SECRET_ERROR) and problem["loc"]:
                message += f" (got {problem['input']!r})"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: value {raw!r} is not valid YAML ({exc})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted ``key=value`` override set: the value replaces what
    the key held, a mapping included (``models={"a": "dir"}`` leaves no other model behind)."""
    result = merge(data, {})
    for text in overrides:
        path, value = parse_override(text)
        result = merge(result, {".".join(path): value}, replace=True)
    return result


def merge(base: Mapping[str, Any], changes: Mapping[str, Any], *, replace: bool = False) -> dict[str, Any]:
    """A deep copy of ``base`` with ``changes`` merged in.

    A key of ``changes`` is a dotted path (``a.b.c``); missing or null sections on the way are
    created, and a path through a value that is not a section is a :class:`ConfigError`. A mapping
    merges into the section it lands on key by key (its own keys are plain: a dot in them is part of
    the key, as in a search space's knobs), unless ``replace``; any other value replaces what was there.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in changes.items():
        path = key.split(".")
        node = merged
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: depth + 1])}: is a value, not a section; cannot set {key}")
            node = child
        node[path[-1]] = copy.deepcopy(value) if replace else _merge_plain(node.get(path[-1]), value)
    return merged


def _merge_plain(current: Any, value: Any) -> Any:
    if isinstance(value, Mapping) and isinstance(current, dict):
        return {**current, **{k: _merge_plain(current.get(k), v) for k, v in value.items()}}
    return copy.deepcopy(value)


def packaged_configs() -> dict[str, Path]:
    """Every shipped config by name (``train/cpu``), sorted."""
    root = _package_root()
    files = (p for p in root.rglob("*") if p.suffix in CONFIG_SUFFIXES)
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(files)}


def find_config(ref: str | Path, relative_to: str | Path | None = None) -> Path:
    """The config file ``ref`` names, by these rules, first match wins:

    1. an absolute path;
    2. a relative path: against ``relative_to``, the directory of the config file that holds the
       reference; without one (a command-line argument) against the current directory;
    3. a shipped config's name, with or without its suffix (``train/cpu``, ``eval/quick.yaml``).
    """
    path = Path(ref).expanduser()
    if path.is_absolute():
        if path.is_file():
            return path
        raise ConfigError(f"config file {str(path)!r} does not exist")
    local = Path(relative_to or ".") / path
    if local.is_file():
        return local.resolve()
    root = _package_root()
    for candidate in (root / path, *(root / f"{path}{suffix}" for suffix in CONFIG_SUFFIXES)):
        if candidate.is_file():
            return candidate
    where = f"in {relative_to}" if relative_to is not None else "in the current directory"
    raise ConfigError(f"config {str(ref)!r}: no such file {where}, nor a shipped config of that name "
                      "(`atflrec configs list` shows them)")


def config_ref(ref: str | Path, relative_to: str | Path | None = None) -> str:
    """``ref`` in a form that means the same from any directory: a shipped config's name, or an absolute path."""
    path = find_config(ref, relative_to)
    root = _package_root()
    if path.is_relative_to(root):
        return path.relative_to(root).with_suffix("").as_posix()
    return str(path)


def _package_root() -> Path:
    return Path(str(resources.files("atflrec") / "configs"))


def _config_ref_field(value: str, info: ValidationInfo) -> str:
    return config_ref(value, (info.context or {}).get(RELATIVE_TO))


# A field naming another config file: checked when it validates, held as a name or an absolute path.
ConfigRef = Annotated[str, AfterValidator(_config_ref_field)]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top, not {type(data).__name__}")
    return data


def build_config(model: type[M], data: dict[str, Any], source: str = "config",
                 relative_to: str | Path | None = None) -> M:
    """Validate ``data`` against ``model``; errors name the dotted key. ``relative_to`` is where the
    config came from: :data:`ConfigRef` fields resolve relative paths there (else in the current
    directory: a command-line or Python value)."""
    try:
        return model.model_validate(data, context={RELATIVE_TO: relative_to})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(model: type[M], path: str | Path | None = None, overrides: Iterable[str] = ()) -> M:
    """Load ``model`` from an optional YAML file (a path or a shipped config's name, see
    :func:`find_config`) plus dotted ``key=value`` overrides."""
    file = find_config(path) if path is not None else None
    data = read_yaml(file) if file is not None else {}
    overrides = list(overrides)
    data = apply_overrides(data, overrides)
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " + overrides"
    return build_config(model, data, source, file.parent if file is not None else None)


def dump_config(config: BaseModel) -> str:
    """The config as YAML, in a form ``load_config`` reads back to an equal model."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
