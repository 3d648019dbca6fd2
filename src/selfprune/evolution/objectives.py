"""What a candidate's fitness measures: one objective per name, in one registry.

An objective turns the pruned model's logits on the fitness tokens into one number, lower is
better, and carries the name shown to people and to the operator LLM ("perplexity" or "KL to
dense"), so prompts, plots and reports never call a KL divergence a perplexity. To add one,
subclass ``Objective`` and list it in ``OBJECTIVES``.
"""

from __future__ import annotations

import math

from selfprune.errors import SelfpruneError


class Objective:
    name = "objective"
    display = "fitness"  # how prompts, plots and reports name the value
    needs_dense = False  # True: the dense model's log-probabilities are computed once, up front

    def batch_loss(self, logits, targets, dense_logprobs=None):
        """The summed loss of one batch, a 0-d tensor on the logits' device (no host sync):
        ``logits`` (B, S-1, V) float32, ``targets`` (B, S-1)."""
        raise NotImplementedError

    def batch_sum(self, logits, targets, dense_logprobs=None) -> float:
        return float(self.batch_loss(logits, targets, dense_logprobs))

    def value(self, mean: float) -> float:
        """The fitness from the mean loss per predicted token."""
        return mean


class Perplexity(Objective):
    name = "ppl"
    display = "perplexity"

    def batch_loss(self, logits, targets, dense_logprobs=None):
        logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1))
        return -logp.sum()

    def value(self, mean: float) -> float:
        return math.exp(min(mean, 700.0))  # exp overflows past ~709: a hopeless candidate, not a crash


class KLToDense(Objective):
    """EvoPress's choice: how far the pruned model's next-token distribution moved from the dense one."""

    name = "kl"
    display = "KL to dense"
    needs_dense = True

    def batch_loss(self, logits, targets, dense_logprobs=None):
        dense = dense_logprobs.float()
        return (dense.exp() * (dense - logits.log_softmax(-1))).sum()


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (Perplexity(), KLToDense())}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise SelfpruneError(f"unknown fitness '{name}'; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
