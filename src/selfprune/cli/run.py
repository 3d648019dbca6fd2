"""`selfprune run`: search -> prune -> save -> evaluate -> speed -> report, in one command.

The flags are generated from the typed config (``selfprune.config``): every field has one, named
like the same option of ``prune``, ``search``, ``eval`` and ``bench``. Flags override the YAML
given with ``--config``, which overrides the preset.
"""

from __future__ import annotations

import argparse
import sys

# Flags whose name is not simply the field's name (kept equal to the other subcommands' flags).
FLAG_NAMES = {
    "output.dir": "--out",
    "bench.enabled": "--bench",
    "eval.dense": "--eval-dense",
}
# Fields given otherwise: `model` is the positional MODEL.
POSITIONAL = {"model"}


def flag_for(path: str) -> str:
    return FLAG_NAMES.get(path) or "--" + path.rsplit(".", 1)[-1].replace("_", "-")


def register(sub) -> None:
    from selfprune.config import RunConfig, field_paths

    p = sub.add_parser(
        "run",
        help="search, prune, save, evaluate, benchmark and report, in one command",
        description="The whole job: search per-layer rates, prune with the best, save the pruned model, evaluate "
        "dense and pruned (perplexity, zero-shot), measure speed, and write DIR/report.md with plots. "
        "Options come from --config YAML, then flags; --dump-config shows the resolved config.",
    )
    p.add_argument("model", nargs="?", default=argparse.SUPPRESS, metavar="MODEL",
                   help="a local model directory, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--config", metavar="FILE", help="a run config in YAML (see --dump-config)")
    p.add_argument("--dump-config", metavar="FILE", help="write the resolved config as YAML to FILE ('-': stdout) and exit")
    groups = {}
    for path, parts in field_paths().items():
        if path in POSITIONAL:
            continue
        section = parts[0] if len(parts) == 2 else "run"
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} options" if section != "run" else "run options")
        info = _field_info(RunConfig, parts)
        kwargs = dict(dest=path, default=argparse.SUPPRESS, help=_help(info, path))
        if _is_bool(info.annotation):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = _metavar(path, info)
        groups[section].add_argument(flag_for(path), **kwargs)
    p.set_defaults(handler=run)


def _field_info(model, parts):
    info = model.model_fields[parts[0]]
    if len(parts) == 2:
        info = info.annotation.model_fields[parts[1]]
    return info


def _is_bool(annotation) -> bool:
    return annotation is bool or annotation == (bool | None)


def _metavar(path: str, info) -> str:
    import typing

    name = path.rsplit(".", 1)[-1]
    fixed = {"shapes": "BxS,...", "operator": "NAME[,NAME]", "tasks": "LIST|all", "dir": "DIR"}
    if name in fixed:
        return fixed[name]
    if typing.get_origin(info.annotation) is typing.Literal:
        return "{" + ",".join(typing.get_args(info.annotation)) + "}"
    return name.upper()


def _help(info, path: str) -> str:
    text = info.description or ""
    default = info.default
    if info.is_required():
        return text + " (required)"
    if default is not None:
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def overrides_from(args: argparse.Namespace) -> dict:
    """Nested {section: {field: value}} of the flags actually given; 'none'/'null' clear a field."""
    from selfprune.config import field_paths

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


def run(args) -> int:
    from pathlib import Path

    from selfprune.config import load_config

    cfg = load_config(args.config, overrides_from(args))
    if args.dump_config:
        text = cfg.to_yaml()
        if args.dump_config == "-":
            sys.stdout.write(text)
        else:
            from selfprune.atomic import atomic_write_text

            atomic_write_text(Path(args.dump_config).expanduser(), text)
            print(f"wrote {args.dump_config}")
        return 0

    from selfprune.report.summary import summary_text
    from selfprune.runner import execute

    result = execute(cfg, argv=sys.argv[1:])
    print(summary_text(result.results, result.dir))
    return 0
