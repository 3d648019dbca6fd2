"""Command-line flags generated from the option objects (``selfprune.options``), so ``prune``,
``search`` and ``run`` share every flag's name, default, help and allowed values."""

from __future__ import annotations

import argparse
import typing

from selfprune.config import RunConfig, field_paths, flag_for, top_level_value

# The run config's top-level fields that say where and how a model loads: flags of every command that loads one.
PLACEMENT = ["device", "dtype", "device_map", "trust_remote_code"]

_METAVARS = {"shapes": "BxS,...", "operator": "NAME[,NAME]", "tasks": "LIST|all", "dir": "DIR",
             "preset": "{quick,paper,paper-recover}", "fitness_samples": "N[,N...]", "stage_keep": "F[,F...]"}


def field_info(parts: tuple[str, ...]):
    info = RunConfig.model_fields[parts[0]]
    if len(parts) == 2:
        info = info.annotation.model_fields[parts[1]]
    return info


def add_option_flags(parser: argparse.ArgumentParser, paths: list[str], grouped: bool = True) -> None:
    """One flag per config field in ``paths`` (``section.field`` or a top-level field). Flags not
    given stay absent from the namespace, so they never override a config file."""
    all_paths = field_paths()
    groups: dict[str, argparse._ActionsContainer] = {}
    for path in paths:
        parts = all_paths[path]
        section = parts[0] if len(parts) == 2 else "run"
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} options") if grouped else parser
        info = field_info(parts)
        kwargs = {"dest": path, "default": argparse.SUPPRESS, "help": _help(info)}
        if _is_bool(info.annotation):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = _metavar(path, info)
        groups[section].add_argument(flag_for(path), **kwargs)


def section_paths(*sections: str) -> list[str]:
    return [p for p, parts in field_paths().items() if len(parts) == 2 and parts[0] in sections]


def overrides_from(args: argparse.Namespace) -> dict:
    """Nested {section: {field: value}} of the flags actually given; 'none'/'null' clear a field."""
    out: dict = {}
    for path, parts in field_paths().items():
        if path not in vars(args):
            continue
        value = getattr(args, path)
        if isinstance(value, str) and value.lower() in ("none", "null"):
            value = None
        target = out
        for key in parts[:-1]:
            target = target.setdefault(key, {})
        target[parts[-1]] = value
    return out


def add_model_flags(parser: argparse.ArgumentParser, cls, metavars: dict[str, str] | None = None) -> None:
    """One flag per field of any ``Options`` class ``cls`` (``--field-name``, stored under the field's
    name) with the field's own default, its description as help, ``--x/--no-x`` for a boolean and the
    choices of a Literal. Other values reach ``cls`` as typed, and its fields convert and check them
    (a comma list is split by the field's own validator, as in a run's sections): ``values_from``."""
    for name, info in cls.model_fields.items():
        kwargs = {"dest": name, "default": info.default}
        if _is_bool(info.annotation):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(info.annotation) is typing.Literal:
            kwargs["choices"] = typing.get_args(info.annotation)
        else:
            kwargs["metavar"] = (metavars or {}).get(name) or _metavar(name, info)
        action = parser.add_argument("--" + name.replace("_", "-"), **kwargs)
        action.help = _help(info)  # set after: some Python versions append the default to a boolean's help


def values_from(args: argparse.Namespace, cls) -> dict:
    """{field: value} of ``cls``'s flags (``add_model_flags``); 'none'/'null' clear a field that may be None."""
    out = {}
    for name, info in cls.model_fields.items():
        if name not in vars(args):
            continue
        value = getattr(args, name)
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in typing.get_args(info.annotation):
            value = None
        out[name] = value
    return out


def placement_from(given: dict) -> dict:
    """The placement flags given (``overrides_from``), validated like a config's fields, with the config's
    defaults: ``device``, ``dtype``, ``device_map`` and ``trust_remote_code`` for ``load_model``."""
    from selfprune.errors import SelfpruneError

    place = {name: top_level_value(name, given[name]) if name in given else RunConfig.model_fields[name].default
             for name in PLACEMENT}
    if place["device_map"] is not None and place["device"] is not None:
        raise SelfpruneError("give one of --device and --device-map")
    return place


def _is_bool(annotation) -> bool:
    return annotation is bool or annotation == (bool | None)


def _metavar(path: str, info) -> str:
    name = path.rsplit(".", 1)[-1]
    if name in _METAVARS:
        return _METAVARS[name]
    if typing.get_origin(info.annotation) is typing.Literal:
        return "{" + ",".join(typing.get_args(info.annotation)) + "}"
    return name.upper()


def _help(info) -> str:
    text = info.description or ""
    default = info.default
    if info.is_required():
        return text + " (required)"
    if default is not None:
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")
