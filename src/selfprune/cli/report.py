"""`selfprune report DIR`: rebuild report.md and its plots from a run directory's results."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild report.md and its plots from a run directory",
        description="Rebuild DIR/report.md and the PNG plots beside it from DIR/results.json and the search history.",
    )
    p.add_argument("dir", metavar="DIR", help="the directory of a `selfprune run`")
    p.set_defaults(handler=run)


def run(args) -> int:
    from selfprune.report import build_report

    print(f"wrote {build_report(args.dir)}")
    return 0
