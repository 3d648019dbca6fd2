"""The options of pruning: importance scoring and the shape of the pruned layers (``selfprune prune``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selfprune.data.calibration import CALIBRATION_SOURCES
from selfprune.options import Options, names
from selfprune.pruning.layouts import GRANULARITIES
from selfprune.pruning.metrics import METRICS


class PruneOptions(Options):
    """Importance scoring and the shape of the pruned layers (as ``selfprune prune``)."""

    metric: Literal[names(METRICS)] = Field("wanda-sp", description="importance metric")
    calib: str = Field("lambada", description=f"calibration text: {', '.join(CALIBRATION_SOURCES)}, or a text FILE")
    calib_samples: int = Field(32, ge=1, description="calibration sequences")
    calib_seqlen: int = Field(256, ge=2, description="tokens per calibration sequence")
    attn_granularity: Literal[GRANULARITIES] = Field(
        "head", description="head: any query heads per kept KV group; group: whole KV groups")
    mlp_multiple: int = Field(1, ge=1, description="round MLP widths to a multiple of K")
    bias_compensation: bool | None = Field(
        None, description="compensate removed channels in the output bias (default: on, off for magnitude)")

    def compensates(self) -> bool:
        """Bias compensation as asked, else the metric's default: on for the activation-based
        metrics, off for magnitude (no activations). Adding the mean contribution of removed
        channels to the output bias (FLAP) costs one vector per block and matters enormously for
        attention: on SmolLM2 at a uniform 30%, wanda-sp gives a WikiText-2 perplexity of 2969
        without it and 335 with it (4x512 tokens; benchmarks/results/bias_compensation/). ``False`` gives plain Wanda-sp, as in Self-Pruner."""
        if self.bias_compensation is not None:
            return self.bias_compensation
        return METRICS[self.metric].compensates_by_default
