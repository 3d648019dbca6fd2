"""The ``selfprune`` command. Each subcommand lives in its own module of this package and exposes
``register(subparsers)``; they map one-to-one onto the Python API. User mistakes end as one line on
stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from selfprune.errors import SelfpruneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfprune",
        description="Automatic post-training structured pruning of LLMs with an LLM-driven search for per-layer rates.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except SelfpruneError as exc:
        print(f"selfprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
