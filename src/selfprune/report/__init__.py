"""The run report: ``report.md`` and its PNG plots, rebuilt from ``results.json`` and the
search's history files of a run directory."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from selfprune.errors import SelfpruneError
from selfprune.results import RunResults

REPORT = "report.md"


def load_run(run_dir: str | Path) -> tuple[RunResults, dict[str, list[dict]]]:
    """``results.json`` of a run directory and each operator's per-generation history."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise SelfpruneError(f"'{run_dir}' holds no results.json; pass the directory of a `selfprune run`")
    raw = _read_json(path)
    try:
        operators = {name: op["files"]["history.json"] for name, op in raw["search"]["operators"].items()}
    except (KeyError, TypeError, AttributeError):
        raise SelfpruneError(f"'{path}' lists no search operators with their history files; pass the directory "
                             "of a `selfprune run`") from None
    histories = {}
    for name, file in operators.items():
        hist = run_dir / file
        if not hist.is_file():
            raise SelfpruneError(f"the search history '{hist}' is missing; the report needs it for the convergence plot")
        histories[name] = _read_json(hist)
    try:
        results = RunResults.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "the top level"
        raise SelfpruneError(f"'{path}' is not a run's results.json ({where}: {err['msg']}); pass the directory "
                             "of a `selfprune run`") from None
    return results, histories


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SelfpruneError(f"'{path}' is not UTF-8 text; a run writes it as JSON") from None
    except json.JSONDecodeError as exc:
        # json's own messages may end in "at" ("Unterminated string starting at"): the position follows it.
        raise SelfpruneError(f"'{path}' is not valid JSON ({exc.msg.removesuffix(' at')} at line {exc.lineno}, "
                             f"column {exc.colno})") from None


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
