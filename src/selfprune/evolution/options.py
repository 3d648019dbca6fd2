"""The options of the search for per-layer rates (``selfprune search``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from selfprune.evolution.genome import BUDGETS
from selfprune.evolution.objectives import OBJECTIVES
from selfprune.evolution.operators.seeds import INITS
from selfprune.evolution.strategies import OPERATORS
from selfprune.options import Options, bad, comma_list, names


class SearchOptions(Options):
    """The search for per-layer rates (as ``selfprune search``)."""

    operator: list[Literal[OPERATORS]] = Field(
        ["llm"], min_length=1,
        description="search operator(s); several run one after another on the same budget and the best genome wins")
    init: Literal[INITS] = Field(
        "seeded", description="initial population of every searching operator: seeded (uniform, OWL, "
        "importance-derived shapes and block removal, then level switches of them) or noise (Gaussian noise around uniform)")
    population: int = Field(8, ge=1, description="population size (survivors per generation)")
    generations: int = Field(4, ge=0, description="generations after the initial population")
    crossover: int = Field(4, ge=0, description="offspring by crossover per generation")
    mutation: int = Field(4, ge=0, description="offspring by mutation per generation")
    max_evals: int | None = Field(None, ge=1, description="fitness evaluations per operator (default: population + "
                                  "generations x offspring, the same for every operator)")
    max_tokens: int | None = Field(None, ge=1, description="stop after this many fitness tokens (per operator)")
    fitness: Literal[names(OBJECTIVES)] = Field(
        "ppl", description="ppl of the pruned model, or KL divergence to the dense model")
    fitness_samples: list[int] = Field([2], min_length=1, description="fitness blocks per selection stage (non-decreasing)")
    fitness_seqlen: int = Field(512, ge=2, description="tokens per fitness block (512: docs/search.md, 'Which fitness "
                                "generalises')")
    stage_keep: list[float] | None = Field(None, description="fraction of offspring promoted at each stage but the "
                                           "last (default 0.25 when there are several stages)")
    budget: Literal[BUDGETS] = Field("mean", description="mean: mean rate over layers; params: exact parameter fraction")
    min_rate: float = Field(0.0, ge=0.0, le=1.0, description="lowest rate of any block")
    max_rate: float = Field(0.9, ge=0.0, le=1.0, description="highest rate of any block")
    joint: bool = Field(False, description="one rate per layer for attention and MLP alike")
    llm: str | None = Field(None, description="operator LLM: self (the model being pruned), local:PATH, openai:MODEL, "
                            "or random (a null LLM that fills the reply templates with random legal values)")
    llm_base_url: str | None = Field(None, description="URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama, a hosted API)")
    llm_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    llm_timeout: float = Field(120.0, gt=0, description="seconds per LLM request")
    llm_share: float = Field(0.3, ge=0.0, le=1.0, description="share of each generation's offspring the LLM writes")
    workers: int = Field(1, ge=1, description="fitness workers (Ray actors, each with a model replica on a GPU, a group "
                         "of GPUs or CPU threads); 1: evaluate in this process")
    ray_address: str | None = Field(None, description="Ray cluster to run the fitness workers on (e.g. auto or "
                                    "ray://HOST:10001; default: a local Ray started for the search)")

    @field_validator("operator", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("fitness_samples", mode="before")
    @classmethod
    def _int_list(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        return comma_list(v, int, "integers like 2 or 2,8")

    @field_validator("stage_keep", mode="before")
    @classmethod
    def _float_list(cls, v):
        return comma_list(v, float, "fractions like 0.25 or 0.5,0.25")

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data):
        """Defaults that depend on other fields: the LLM operator's LLM is the model itself, and
        several fitness stages promote a quarter of the offspring at each stage."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        ops = data.get("operator", cls.model_fields["operator"].default)
        ops = cls._split(ops) if isinstance(ops, str) else ops
        if isinstance(ops, list) and "llm" in ops and data.get("llm") is None:
            data["llm"] = "self"
        try:
            stages = len(cls._int_list(data.get("fitness_samples", cls.model_fields["fitness_samples"].default)))
        except (TypeError, ValueError):
            stages = 1  # the field's own validator reports it
        if data.get("stage_keep") is None and stages > 1:
            data["stage_keep"] = [0.25] * (stages - 1)
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if any(n < 1 for n in self.fitness_samples) or self.fitness_samples != sorted(self.fitness_samples):
            raise bad("fitness_samples", f"must be positive and non-decreasing, got {self.fitness_samples}")
        keep = self.stage_keep
        if keep is not None:
            if len(keep) != len(self.fitness_samples) - 1:
                raise bad("stage_keep", f"needs one fraction per fitness stage but the last "
                                        f"({len(self.fitness_samples) - 1}), got {len(keep)}")
            if not all(0 < k <= 1 for k in keep):
                raise bad("stage_keep", "fractions must lie in (0, 1]")
        if self.min_rate > self.max_rate:
            raise bad("min_rate", f"{self.min_rate} is above max_rate {self.max_rate}")
        if len(set(self.operator)) != len(self.operator):
            raise bad("operator", f"lists a name twice: {self.operator}")
        uses_llm = "llm" in self.operator
        llm = self.llm
        if not uses_llm and (llm is not None or self.llm_base_url is not None):
            raise bad("llm" if llm is not None else "llm_base_url",
                      "is set but no 'llm' operator runs; add llm to search.operator or drop it")
        if llm is not None:
            kind, _, arg = llm.partition(":")
            if not (llm in ("self", "random") or (kind in ("local", "openai") and arg)):
                raise bad("llm", f"'{llm}' is not one of: self, local:PATH, openai:MODEL, random")
            if self.llm_base_url and kind != "openai":
                raise bad("llm_base_url", "needs llm: openai:MODEL (the model name the server serves)")
        return self
