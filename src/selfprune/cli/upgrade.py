"""`selfprune upgrade DIR...`: make checkpoints pruned by earlier selfprune versions name their own
architecture in config.json, so that vLLM (with selfprune's plugin) serves them."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("upgrade", help="make checkpoints of earlier versions name their pruned architecture (for vLLM)",
                       description=__doc__.split("\n\n")[0].replace("`", ""))
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a pruned checkpoint folder")
    p.set_defaults(handler=run)


def run(args) -> int:
    from selfprune.pruning.architecture import mark_architecture

    for folder in args.dirs:
        changed = mark_architecture(folder)
        print(f"{folder}: {'upgraded' if changed else 'already up to date'}")
    return 0
