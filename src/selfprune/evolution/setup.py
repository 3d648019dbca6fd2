"""What one search's result depends on, in one object.

The fitness values a search caches depend on the fitness and its data, the importance metric and
calibration that decide which heads and channels a rate keeps, the seed, the model and its dtype;
the rates it returns mean something only at its target. ``SearchSetup`` holds all of it once: a
resume must match its ``fingerprint``, ``report.json`` records it, and ``best.json`` carries
``made_with`` so that ``selfprune prune --rates best.json`` needs no other file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from selfprune.pruning.options import PruneOptions

if TYPE_CHECKING:  # evolution.options names the strategies, whose loop records a SearchSetup
    from selfprune.evolution.options import SearchOptions


class SearchSetup(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None  # as the user named it ("default", a folder, a hub id); None where unknown
    ratio: float
    seed: int = 0
    prune: PruneOptions
    fitness: str
    fitness_samples: list[int]
    fitness_seqlen: int
    # Known once the model has loaded and the data is tokenized; None before.
    dtype: str | None = None
    calib_sha256: str | None = None
    fitness_sha256: str | None = None

    @classmethod
    def of(cls, ratio: float, prune: PruneOptions, search: SearchOptions, seed: int = 0, model: str | None = None,
           **measured: Any) -> SearchSetup:
        return cls(model=model, ratio=ratio, seed=seed, prune=prune, fitness=search.fitness,
                   fitness_samples=list(search.fitness_samples), fitness_seqlen=search.fitness_seqlen, **measured)

    def fingerprint(self) -> dict[str, Any]:
        """What the cached fitness values depend on, flat, leaving out what is not known yet. The target is
        not in it: the genome space records that, and a resume compares the space too."""
        p = self.prune
        values = {"model": self.model, "seed": self.seed, "metric": p.metric, "calib": p.calib,
                  "calib_samples": p.calib_samples, "calib_seqlen": p.calib_seqlen,
                  "attn_granularity": p.attn_granularity, "mlp_multiple": p.mlp_multiple,
                  "bias_compensation": p.compensates(), "fitness": self.fitness,
                  "fitness_samples": list(self.fitness_samples), "fitness_seqlen": self.fitness_seqlen,
                  "dtype": self.dtype, "calib_sha256": self.calib_sha256, "fitness_sha256": self.fitness_sha256}
        return {k: v for k, v in values.items() if v is not None}

    def made_with(self) -> dict[str, Any]:
        """What pruning with the found rates needs to keep the heads and channels the search scored."""
        return {"model": self.model, "ratio": self.ratio, "seed": self.seed,
                "prune": self.prune.model_dump(mode="json")}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
