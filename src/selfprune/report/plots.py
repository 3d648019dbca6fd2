"""The run's pictures: how the search converged, and where the best genome prunes.

Each function draws on a given matplotlib Axes, so the same panel appears on its own (one PNG per
figure beside report.md) and in the overview figure. The Agg backend is used: no display needed.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from selfprune.results import ProblemRecord, Rates, RunResults  # noqa: E402

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
UNIFORM_COLOR = "#7f7f7f"


def _fitness_label(problem: ProblemRecord) -> str:
    tokens = problem.fitness_tokens
    what = problem.fitness_name or _display_name(problem.fitness)
    return f"fitness: {what}" + (f" on {tokens:,} held-out tokens" if tokens else "") + " (lower is better)"


def _display_name(kind: str) -> str:
    """How the objective ``kind`` is named (for runs that did not record its name)."""
    from selfprune.evolution.objectives import OBJECTIVES

    return OBJECTIVES[kind].display if kind in OBJECTIVES else kind


def convergence(ax, histories: dict[str, list[dict]], uniform_fitness: float | None, problem: ProblemRecord) -> None:
    """Best (solid) and median (dashed) fitness of the population per generation, per operator."""
    values = []
    for color, (name, history) in zip(COLORS * 3, histories.items()):
        gens = [h["generation"] for h in history]
        best = [h["best"] for h in history]
        ax.plot(gens, best, "-o", color=color, lw=2, ms=4, label=f"{name}: best")
        middle_key = "median" if all("median" in h for h in history) else "mean"
        middle = [h[middle_key] for h in history]
        if any(math.isfinite(v) for v in middle):
            ax.plot(gens, middle, "--", color=color, lw=1.3, alpha=0.8, label=f"{name}: {middle_key}")
        values += [v for v in best + middle if math.isfinite(v)]
    if uniform_fitness is not None and math.isfinite(uniform_fitness):
        ax.axhline(uniform_fitness, color=UNIFORM_COLOR, ls=":", lw=1.5, label="uniform rates")
        values.append(uniform_fitness)
    if values and min(values) > 0 and max(values) / min(values) > 5:
        ax.set_yscale("log")
    ax.set_xlabel("generation")
    ax.set_ylabel(_fitness_label(problem), fontsize=8)
    ax.set_title("Search convergence")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)


def layer_rates(ax, rates: list[float], uniform: list[float], title: str, color: str) -> None:
    """Bars: the best genome's rate per layer; a step line: the uniform genome's."""
    layers = list(range(len(rates)))
    ax.bar(layers, [100 * r for r in rates], color=color, alpha=0.85, width=0.8, label="searched")
    ax.step([i - 0.5 for i in layers] + [len(layers) - 0.5], [100 * u for u in uniform] + [100 * uniform[-1]],
            where="post", color="black", lw=1.5, ls="--", label="uniform")
    ax.set_xlim(-0.7, len(layers) - 0.3)
    ax.set_ylim(0, max(100 * max(rates + uniform) * 1.35, 5))  # headroom for the legend
    ax.set_ylabel("pruned (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper right", ncol=2)


def rates_panels(axes, best: Rates, uniform: Rates) -> None:
    layer_rates(axes[0], best.attn, uniform.attn, "Attention: share of parameters removed per layer", COLORS[0])
    layer_rates(axes[1], best.mlp, uniform.mlp, "MLP: share of parameters removed per layer", COLORS[1])
    axes[1].set_xlabel("layer")


def write_plots(run_dir: Path, results: RunResults, histories: dict[str, list[dict]]) -> dict[str, str]:
    """convergence.png, rates.png and overview.png (both side by side) in ``run_dir``."""
    search, problem = results.search, results.problem
    uniform_fitness = search.uniform.fitness
    files = {}

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    convergence(ax, histories, uniform_fitness, problem)
    files["convergence"] = _save(fig, run_dir / "convergence.png")

    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), dpi=120, sharex=True)
    rates_panels(axes, results.best, search.uniform)
    files["rates"] = _save(fig, run_dir / "rates.png")

    fig = plt.figure(figsize=(14, 5), dpi=110)
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.5))
    convergence(fig.add_subplot(grid[:, 0]), histories, uniform_fitness, problem)
    right = [fig.add_subplot(grid[0, 1])]
    right.append(fig.add_subplot(grid[1, 1], sharex=right[0]))
    rates_panels(right, results.best, search.uniform)
    fig.suptitle(f"selfprune: {results.model} at ratio {results.ratio:g}", fontweight="bold")
    files["overview"] = _save(fig, run_dir / "overview.png")
    return files


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
