"""Importance metrics: one scorer per name, in one registry.

A metric turns a layer's weights and the calibration statistics of the projections' inputs into
one score per attention-output channel (summed per head by the caller) and one per MLP channel;
higher means more important. ``stats[role]`` holds the input statistics of that projection role
(``q`` for the attention input, ``o``, ``gate`` for the MLP input, ``down``): ``norm()``,
``variance()``, ``mean()``. To add a metric, subclass ``ImportanceMetric`` and list it in
``METRICS``.
"""

from __future__ import annotations

from selfprune.errors import SelfpruneError


class ImportanceMetric:
    name = "metric"
    description = ""
    needs_activations = True  # False: weights alone (no calibration pass unless compensating)
    compensates_by_default = True  # FLAP's bias compensation on unless asked otherwise

    def attention(self, w_o: torch.Tensor, w_q: torch.Tensor, stats: dict) -> torch.Tensor:
        """Scores of the attention output's input channels (heads x head_dim), float64."""
        raise NotImplementedError

    def mlp(self, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, stats: dict) -> torch.Tensor:
        """Scores of the MLP channels, float64."""
        raise NotImplementedError


class WandaSP(ImportanceMetric):
    name = "wanda-sp"
    description = "|W| times the input activation norm, summed over the output projection (Self-Pruner's)"

    def attention(self, w_o, w_q, stats):
        return (w_o.abs() * stats["o"].norm()).sum(0)

    def mlp(self, w_gate, w_up, w_down, stats):
        return (w_down.abs() * stats["down"].norm()).sum(0)


class Flap(ImportanceMetric):
    name = "flap"
    description = "FLAP's fluctuation: input channel variance times the squared column norm"

    def attention(self, w_o, w_q, stats):
        return stats["o"].variance() * w_o.pow(2).sum(0)

    def mlp(self, w_gate, w_up, w_down, stats):
        return stats["down"].variance() * w_down.pow(2).sum(0)


class Magnitude(ImportanceMetric):
    name = "magnitude"
    description = "L2 norm of every weight of the head or channel; no activations"
    needs_activations = False
    compensates_by_default = False  # it sees no activations, so it has no means to compensate with

    def attention(self, w_o, w_q, stats):
        return (w_q.pow(2).sum(1) + w_o.pow(2).sum(0)).sqrt()

    def mlp(self, w_gate, w_up, w_down, stats):
        return w_gate.pow(2).sum(1).sqrt() + w_up.pow(2).sum(1).sqrt() + w_down.pow(2).sum(0).sqrt()


METRICS: dict[str, ImportanceMetric] = {m.name: m for m in (WandaSP(), Flap(), Magnitude())}


def get_metric(name: str) -> ImportanceMetric:
    if name not in METRICS:
        raise SelfpruneError(f"unknown metric '{name}'; choose one of {', '.join(METRICS)}")
    return METRICS[name]
