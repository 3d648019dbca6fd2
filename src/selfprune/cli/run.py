"""`selfprune run`: search -> prune -> save -> evaluate -> speed -> report, in one command.

The flags are generated from the typed options (``selfprune.options``): every field has one, named
like the same option of ``prune``, ``search``, ``eval`` and ``bench``. Flags override the YAML
given with ``--config``, which overrides the preset.
"""

from __future__ import annotations

import argparse
import sys

# Fields given otherwise: `model` is the positional MODEL.
POSITIONAL = {"model"}


def register(sub) -> None:
    from selfprune.cli.options import add_option_flags
    from selfprune.config import field_paths

    p = sub.add_parser(
        "run",
        help="search, prune, save, evaluate, benchmark and report, in one command",
        description="The whole job: search per-layer rates, prune with the best, save the pruned model, evaluate "
        "dense and pruned (perplexity, zero-shot), measure speed, and write DIR/report.md with plots. "
        "Options come from --config YAML, then flags; --dump-config shows the resolved config.",
    )
    p.add_argument("model", nargs="?", default=argparse.SUPPRESS, metavar="MODEL",
                   help="a local model directory, a .gguf file, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--config", metavar="FILE", help="a run config in YAML (see --dump-config)")
    p.add_argument("--dump-config", metavar="FILE", help="write the resolved config as YAML to FILE ('-': stdout) and exit")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out from its last completed stage (same settings)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run selfprune wrote in --out earlier (kept until the new one is complete)")
    add_option_flags(p, [path for path in field_paths() if path not in POSITIONAL])
    p.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from selfprune.cli.options import overrides_from
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

    result = execute(cfg, argv=sys.argv[1:], resume=args.resume, overwrite=args.overwrite)
    print(summary_text(result.results, result.dir))
    return 0
