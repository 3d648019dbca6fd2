"""Rows of the dense-versus-pruned comparison and of the budget, as text cells.

The markdown report and the console summary print the same rows, so a number reads the same
everywhere; every cell is formatted from a run's typed results (``results.RunResults``) by the functions
below.
"""

from __future__ import annotations

import math

from selfprune.results import RunResults


def params(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def ppl(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def pct(x: float | None) -> str:
    """An accuracy or a fraction in percent, one decimal."""
    return "n/a" if x is None else f"{100 * x:.1f}"


def times(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def tok_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} tok/s"


def seconds(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0f} s" if x < 120 else f"{x / 60:.1f} min"


def fitness(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.4g}"


def _change(before: float | None, after: float | None, kind: str) -> str:
    if before is None or after is None:
        return ""
    if kind == "ratio":
        return f"{after / before:.2f}x" if before else ""
    if kind == "points":
        return f"{100 * (after - before):+.1f} pt"
    return f"{(after - before) / before:+.1%}" if before else ""


def comparison_header(results: RunResults) -> list[str]:
    """The comparison's columns: a "recovered" column when the run distilled the pruned model."""
    recovered = ["recovered", "change (recovered)"] if results.models.get("recovered") else []
    return ["", "dense", "pruned", "change", *recovered]


def comparison_rows(results: RunResults) -> list[tuple[str, ...]]:
    """(what, dense, pruned, change[, recovered, change]) for parameters, perplexity, zero-shot
    and speed; changes are against dense."""
    models = results.models
    dense, pruned, recovered = models["dense"], models["pruned"], models.get("recovered")

    def row(label, get, fmt, kind):
        d, p = get(dense), get(pruned)
        cells = (label, fmt(d), fmt(p), _change(d, p, kind))
        if recovered is not None:
            r = get(recovered)
            cells += (fmt(r), _change(d, r, kind))
        return cells

    rows = [row("parameters", lambda m: m.get("params"), params, "relative")]
    dp, pp = dense.get("perplexity"), pruned.get("perplexity")
    if dp or pp:
        proto = (pp or dp)["protocol"]
        label = f"perplexity ({_source_name(proto['source'])}, seqlen {proto['seqlen']}, {proto['windows']} windows)"
        rows.append(row(label, lambda m: (m.get("perplexity") or {}).get("ppl"), ppl, "ratio"))
        # eval.more_seqlens: one more row per extra window length
        by_seqlen = pruned.get("perplexity_by_seqlen") or dense.get("perplexity_by_seqlen") or {}
        for key, result in by_seqlen.items():
            p = result["protocol"]
            if p["seqlen"] == proto["seqlen"]:
                continue
            label = f"perplexity ({_source_name(p['source'])}, seqlen {p['seqlen']}, {p['windows']} windows)"
            rows.append(row(label, lambda m, key=key: ((m.get("perplexity_by_seqlen") or {}).get(key) or {}).get("ppl"),
                            ppl, "ratio"))
    dz, pz = dense.get("zeroshot"), pruned.get("zeroshot")
    if dz or pz:
        tasks = list((pz or dz)["tasks"])
        for task in tasks:
            metric = (pz or dz)["tasks"][task]["metric_for_average"]
            rows.append(row(f"{task} {metric} (%)",
                            lambda m: ((m.get("zeroshot") or {}).get("tasks") or {}).get(task, {}).get(metric), pct,
                            "points"))
        rows.append(row(f"zero-shot average (%, {len(tasks)} tasks)",
                        lambda m: (m.get("zeroshot") or {}).get("average"), pct, "points"))
    same = ("as pruned", "") if recovered is not None else ()  # distillation keeps every shape
    speed = results.speed
    if speed:
        d, p, c = speed["models"]["dense"], speed["models"]["pruned"], speed["comparison"]["pruned"]
        for shape, value in p["prefill_ms"].items():
            rows.append((f"prefill {shape} latency", ms(d["prefill_ms"][shape]), ms(value),
                         f"{times(c['prefill_speedup'][shape])} faster", *same))
        for batch, value in p["decode_tok_s"].items():
            rows.append((f"decode batch {batch} throughput", tok_s(d["decode_tok_s"][batch]), tok_s(value),
                         f"{times(c['decode_speedup'][batch])} faster", *same))
        rows.append(("ideal speed-up (parameter ratio)", "", "", times(c["ideal"]), *same))
        if d.get("peak_mb") is not None and p.get("peak_mb") is not None:
            rows.append(("peak memory", f"{d['peak_mb']:.0f} MB", f"{p['peak_mb']:.0f} MB",
                         _change(d["peak_mb"], p["peak_mb"], "relative"), *same))
    return rows


def budget_rows(results: RunResults) -> list[tuple[str, str]]:
    b = results.budget
    rows = [
        ("fitness evaluations", f"{b.fitness_evals:,}"),
        ("fitness tokens", f"{b.fitness_tokens:,}"),
        ("search time", seconds(b.search_seconds)),
        ("total run time", seconds(b.total_seconds)),
    ]
    if b.llm_tokens:
        rows.insert(2, ("operator LLM tokens", f"{b.llm_tokens:,}"))
    return rows


def _source_name(source: str) -> str:
    """A short name for a perplexity source (file paths shown by their file name)."""
    if source.startswith("wikitext2"):
        return "WikiText-2"
    if source.startswith("CoQA stories"):
        return "CoQA stories, offline"
    name = source.rsplit("/", 1)[-1]
    return "WikiText-2 test" if name == "wiki.test.raw" else name


def text_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def markdown_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def format_speed_table(result: dict) -> str:
    """A plain-text table: one row per model, speed-ups and their ratio to the ideal."""
    rows, comp = result["models"], result["comparison"]
    first = next(iter(rows.values()))
    shapes, batches = list(first["prefill_ms"]), list(first["decode_tok_s"])
    header = ["model", "params(M)", "GMACs", "peak MB"] + [f"prefill {s} ms" for s in shapes] + \
             [f"decode b{b} tok/s" for b in batches] + ["ideal x"] + [f"prefill {s} x (/ideal)" for s in shapes] + \
             [f"decode b{b} x (/ideal)" for b in batches]
    lines = []
    for name, row in rows.items():
        c = comp[name]
        peak = f"{row['peak_mb']:.0f}" if row["peak_mb"] is not None else "n/a"
        lines.append([name, f"{row['params'] / 1e6:.1f}", f"{row['macs'] / 1e9:.2f}", peak]
                     + [f"{row['prefill_ms'][s]:.1f}" for s in shapes]
                     + [f"{row['decode_tok_s'][b]:.1f}" for b in batches]
                     + [f"{c['ideal']:.2f}"]
                     + [f"{c['prefill_speedup'][s]:.2f} ({c['prefill_vs_ideal'][s]:.2f})" for s in shapes]
                     + [f"{c['decode_speedup'][b]:.2f} ({c['decode_vs_ideal'][b]:.2f})" for b in batches])
    return text_table(header, lines)
