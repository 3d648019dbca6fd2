"""The options of each job, as typed, frozen objects: the one place each option, its default and
its allowed names are declared.

``PruneOptions`` (importance and layer shapes) is what ``selfprune prune`` takes; ``SearchOptions``
is what ``selfprune search`` adds; ``EvalOptions``, ``BenchOptions`` and ``OutputOptions`` complete
``selfprune run``. The command-line flags of all three commands are generated from these fields
(``selfprune.cli.options``), and the functions of the API take these objects, so a default or a
name list can never differ between a command, the config file and the Python API. Allowed names
come from the registries that implement them (metrics, strategies, objectives, ...).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selfprune.data.calibration import CALIBRATION_SOURCES
from selfprune.eval.zeroshot import SOURCES as TASK_SOURCES
from selfprune.eval.zeroshot import TASKS
from selfprune.evolution.genome import BUDGETS
from selfprune.evolution.objectives import OBJECTIVES
from selfprune.evolution.operators.seeds import INITS
from selfprune.evolution.strategies import OPERATORS
from selfprune.export.gguf import OUTTYPES
from selfprune.pruning.metrics import METRICS
from selfprune.recover.options import METHODS as RECOVER_METHODS
from selfprune.recover.options import RecoverOptions
from selfprune.pruning.layouts import GRANULARITIES

FIELD_TAG = "\x1f"  # separates the blamed field from the message in a validator's error


def bad(field: str, message: str) -> ValueError:
    """A contradiction found by a validator, tagged with the field to blame."""
    return ValueError(f"{FIELD_TAG}{field}{FIELD_TAG}{message}")


def comma_list(value, cast, example: str):
    """"2,8" on the command line -> [2, 8]; other values pass to the field's own validation."""
    if not isinstance(value, str):
        return value
    try:
        return [cast(s) for s in value.split(",")]
    except ValueError:
        raise ValueError(f"'{value}' is not a comma-separated list of {example}") from None


def _names(values) -> tuple[str, ...]:
    return tuple(values)


class Options(BaseModel):
    # No option takes inf or nan: inf passes one-sided bounds (gt=0) and nan every hand-written range check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PruneOptions(Options):
    """Importance scoring and the shape of the pruned layers (as ``selfprune prune``)."""

    metric: Literal[_names(METRICS)] = Field("wanda-sp", description="importance metric")
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
        attention: on SmolLM2 at a uniform 30%, wanda-sp gives a WikiText-2 perplexity of 2487
        without it and 371 with it (4x512 tokens). ``False`` gives plain Wanda-sp, as in Self-Pruner."""
        if self.bias_compensation is not None:
            return self.bias_compensation
        return METRICS[self.metric].compensates_by_default


class SearchOptions(Options):
    """The search for per-layer rates (as ``selfprune search``)."""

    operator: list[Literal[OPERATORS]] = Field(
        ["llm"], min_length=1,
        description="search operator(s); several run one after another on the same budget and the best genome wins")
    init: Literal[INITS] = Field(
        "seeded", description="initial population of every searching operator: seeded (uniform, OWL and "
        "importance-derived shapes, then level switches of them) or noise (Gaussian noise around uniform)")
    population: int = Field(8, ge=1, description="population size (survivors per generation)")
    generations: int = Field(4, ge=0, description="generations after the initial population")
    crossover: int = Field(4, ge=0, description="offspring by crossover per generation")
    mutation: int = Field(4, ge=0, description="offspring by mutation per generation")
    max_evals: int | None = Field(None, ge=1, description="fitness evaluations per operator (default: population + "
                                  "generations x offspring, the same for every operator)")
    max_tokens: int | None = Field(None, ge=1, description="stop after this many fitness tokens (per operator)")
    fitness: Literal[_names(OBJECTIVES)] = Field(
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


class EvalOptions(Options):
    """Quality of the dense and pruned models (as ``selfprune eval``)."""

    ppl: str | None = Field("auto", description="perplexity text: wikitext2 (hub), coqa (offline stories), a text "
                            "FILE, auto (wikitext2 when it can be loaded, else coqa, said so), or null (skip)")
    seqlen: int = Field(512, ge=2, description="tokens per perplexity window")
    max_windows: int | None = Field(8, ge=1, description="score only the first N windows (null: the whole text)")
    stride: int | None = Field(None, ge=1, description="window stride (default: seqlen, no overlap)")
    tasks: list[str] = Field(["piqa", "arc_easy"], description="zero-shot tasks (lm-eval), or 'all'; [] skips zero-shot")
    limit: int | None = Field(50, ge=1, description="documents per zero-shot task (null: all; not comparable to papers)")
    task_source: Literal[TASK_SOURCES] = Field("offline", description="offline task data or lm-eval's hub datasets")
    batch_size: int | None = Field(None, ge=1, description="batch size: perplexity windows (default: 2048 tokens' "
                                   "worth) and lm-eval (default 16)")
    dense: bool = Field(True, description="also evaluate the dense model, for the comparison table")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        return list(TASKS) if v == ["all"] else v

    @model_validator(mode="after")
    def _consistent(self):
        if self.stride is not None and self.stride > self.seqlen:
            raise bad("stride", f"{self.stride} is longer than seqlen {self.seqlen}")
        if self.task_source == "offline":
            unknown = [t for t in self.tasks if t not in TASKS]
            if unknown:
                raise bad("tasks", f"unknown offline task(s) {', '.join(unknown)}; known: {', '.join(TASKS)} "
                                   "(other lm-eval tasks need task_source: hub)")
        return self


class BenchOptions(Options):
    """Speed of the dense and pruned models side by side (as ``selfprune bench``)."""

    enabled: bool = Field(True, description="measure speed at all")
    shapes: list[tuple[int, int]] = Field([(1, 128), (1, 512)], description="prefill (batch, sequence) shapes")
    decode_batches: list[int] = Field([1], min_length=1, description="decode batch sizes")
    prompt_len: int = Field(32, ge=1, description="prompt tokens before decoding")
    decode_tokens: int = Field(32, ge=1, description="greedy tokens decoded per measurement")
    warmup: int = Field(1, ge=0, description="untimed runs per model and shape")
    repeats: int = Field(3, ge=1, description="timed runs per model and shape (median kept)")

    @field_validator("shapes", mode="before")
    @classmethod
    def _shapes(cls, v):
        # "1x128,8x128" on the command line
        if isinstance(v, str):
            try:
                return [tuple(int(n) for n in s.lower().split("x")) for s in v.split(",") if s.strip()]
            except ValueError:
                raise ValueError(f"shapes '{v}' is not a list of BATCHxSEQ like 1x128,8x128") from None
        return v

    @field_validator("decode_batches", mode="before")
    @classmethod
    def _ints(cls, v):
        return comma_list(v, int, "batch sizes like 1 or 1,8")

    @model_validator(mode="after")
    def _consistent(self):
        if not self.shapes or any(b < 1 or s < 1 for b, s in self.shapes):
            raise bad("shapes", "needs at least one shape with positive batch and sequence")
        if any(b < 1 for b in self.decode_batches):
            raise bad("decode_batches", "must be positive")
        return self


class RecoverStageOptions(Options):
    """Distillation of the pruned model toward the dense one after the training-free result is
    measured (as ``selfprune recover``); off unless asked for. Defaults are ``RecoverOptions``'s."""

    enabled: bool = Field(False, description="distil the pruned model toward the dense one and report it beside "
                          "the pruned one (DIR/recovered)")
    method: Literal[RECOVER_METHODS] = Field(RecoverOptions.method, description="kd: logit distillation, all "
                                             "parameters; lora-kd: LoRA adapters, merged at save; lm: next-token loss")
    tokens: int = Field(RecoverOptions.tokens, ge=1, description="training tokens")
    seqlen: int = Field(RecoverOptions.seqlen, ge=2, description="tokens per training sequence")
    batch: int = Field(RecoverOptions.batch, ge=1, description="sequences per step")
    lr: float | None = Field(None, gt=0, description="peak learning rate (default: the method's)")
    data: str = Field(RecoverOptions.data, description="training text: lambada, a text FILE or a hub dataset id "
                      "(never the evaluation text)")

    def to_recover_options(self, **settings) -> RecoverOptions:
        fields = self.model_dump(exclude={"enabled"})
        return RecoverOptions(**fields, **settings).validate()


class OutputOptions(Options):
    """Where a job writes, and how much it says."""

    dir: str | None = Field(None, description="the output directory (new or empty)")
    log_file: str | None = Field(None, description="log file (default: DIR/run.log)")
    quiet: bool = Field(False, description="no progress bars; only the summary at the end")
    save_model: bool = Field(True, description="save the pruned checkpoint in DIR/model")
    export: Literal["none", "gguf"] = Field("none", description="also write the pruned model for another runtime: "
                                            "gguf (DIR/model.gguf, for llama.cpp and Ollama)")
    export_outtype: Literal[OUTTYPES] = Field("f16", description="tensor type of the GGUF export")

    @model_validator(mode="after")
    def _consistent(self):
        if self.export != "none" and not self.save_model:
            raise bad("export", "needs the saved checkpoint; drop --no-save-model")
        return self
