"""The run report: ``report.md`` and its PNG plots, rebuilt from ``results.json`` and the
search's history files of a run directory."""

from __future__ import annotations

import json
from pathlib import Path

from selfprune.errors import SelfpruneError

REPORT = "report.md"


def load_run(run_dir: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """``results.json`` of a run directory and each operator's per-generation history."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise SelfpruneError(f"'{run_dir}' holds no results.json; pass the directory of a `selfprune run`")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SelfpruneError(f"'{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    histories = {}
    for name, op in results["search"]["operators"].items():
        hist = run_dir / op["files"]["history.json"]
        if not hist.is_file():
            raise SelfpruneError(f"the search history '{hist}' is missing; the report needs it for the convergence plot")
        histories[name] = json.loads(hist.read_text())
    return results, histories


def build_report(run_dir: str | Path) -> Path:
    """Write the plots and report.md into ``run_dir``; return the report's path."""
    from selfprune.atomic import atomic_write_text
    from selfprune.report.markdown import render
    from selfprune.report.plots import write_plots

    run_dir = Path(run_dir)
    results, histories = load_run(run_dir)
    plots = write_plots(run_dir, results, histories)
    path = run_dir / REPORT
    atomic_write_text(path, render(results, histories, plots))
    return path
