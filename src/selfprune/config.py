"""The typed configuration of a ``selfprune run``: one model per section, YAML in and out.

Where a value comes from, lowest first: the field defaults (the ``quick`` preset: a run of a few
minutes on a laptop CPU), the named preset (``paper``: the search budget of the Self-Pruner
paper, full evaluation), the YAML file, then command-line flags. The resolved config is validated
as a whole (unknown fields, wrong types, contradictions) before anything is written, and the run
directory keeps it as ``config.yaml``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from selfprune.errors import SelfpruneError

ALL_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _bad(field: str, message: str) -> ValueError:
    """A contradiction found by a section's validator, tagged with the field to blame."""
    return ValueError(f"{_FIELD_TAG}{field}{_FIELD_TAG}{message}")


_FIELD_TAG = "\x1f"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PruneSection(Section):
    """Importance scoring and the shape of the pruned layers (as ``selfprune prune``)."""

    metric: Literal["wanda-sp", "flap", "magnitude"] = Field("wanda-sp", description="importance metric")
    calib: str = Field("lambada", description="calibration text: lambada, wikitext2-train, c4, or a text FILE")
    calib_samples: int = Field(16, ge=1, description="calibration sequences")
    calib_seqlen: int = Field(256, ge=2, description="tokens per calibration sequence")
    attn_granularity: Literal["head", "group"] = Field("head", description="head: any query heads per kept KV group; group: whole KV groups")
    mlp_multiple: int = Field(1, ge=1, description="round MLP widths to a multiple of K")
    bias_compensation: bool | None = Field(None, description="compensate removed channels in the output bias (default: on, off for magnitude)")


class SearchSection(Section):
    """The search for per-layer rates (as ``selfprune search``)."""

    operator: list[Literal["llm", "ga", "evopress", "random", "uniform", "owl"]] = Field(
        ["ga"], min_length=1,
        description="search operator(s); several run one after another on the same budget and the best genome wins")
    population: int = Field(8, ge=1, description="population size (survivors per generation)")
    generations: int = Field(4, ge=0, description="generations after the initial population")
    crossover: int = Field(4, ge=0, description="offspring by crossover per generation")
    mutation: int = Field(4, ge=0, description="offspring by mutation per generation")
    max_evals: int | None = Field(None, ge=1, description="fitness evaluations per operator (default: population + "
                                  "generations x offspring, the same for every operator)")
    max_tokens: int | None = Field(None, ge=1, description="stop after this many fitness tokens (per operator)")
    fitness: Literal["ppl", "kl"] = Field("ppl", description="ppl of the pruned model, or KL divergence to the dense model")
    fitness_samples: list[int] = Field([2], min_length=1, description="fitness blocks per selection stage (non-decreasing)")
    fitness_seqlen: int = Field(256, ge=2, description="tokens per fitness block")
    stage_keep: list[float] | None = Field(None, description="fraction of offspring promoted at each stage but the "
                                           "last (default 0.25 when there are several stages)")
    budget: Literal["mean", "params"] = Field("mean", description="mean: mean rate over layers; params: exact parameter fraction")
    min_rate: float = Field(0.0, ge=0.0, le=1.0, description="lowest rate of any block")
    max_rate: float = Field(0.9, ge=0.0, le=1.0, description="highest rate of any block")
    joint: bool = Field(False, description="one rate per layer for attention and MLP alike")
    llm: str | None = Field(None, description="operator LLM: self (the model being pruned), local:PATH, or openai:MODEL")
    llm_base_url: str | None = Field(None, description="URL of an OpenAI-compatible server (vLLM, llama.cpp, Ollama, a hosted API)")
    llm_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    llm_timeout: float = Field(120.0, gt=0, description="seconds per LLM request")
    llm_share: float = Field(0.3, ge=0.0, le=1.0, description="share of each generation's offspring the LLM writes")

    @field_validator("operator", mode="before")
    @classmethod
    def _split(cls, v):
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("fitness_samples", mode="before")
    @classmethod
    def _int_list(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return [v]
        return [int(s) for s in v.split(",")] if isinstance(v, str) else v

    @field_validator("stage_keep", mode="before")
    @classmethod
    def _float_list(cls, v):
        return [s.strip() for s in v.split(",")] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self):
        if any(n < 1 for n in self.fitness_samples) or self.fitness_samples != sorted(self.fitness_samples):
            raise _bad("fitness_samples", f"must be positive and non-decreasing, got {self.fitness_samples}")
        if self.stage_keep is None and len(self.fitness_samples) > 1:
            self.stage_keep = [0.25] * (len(self.fitness_samples) - 1)  # as `selfprune search`
        if self.stage_keep is not None:
            if len(self.stage_keep) != len(self.fitness_samples) - 1:
                raise _bad("stage_keep", f"needs one fraction per fitness stage but the last "
                                         f"({len(self.fitness_samples) - 1}), got {len(self.stage_keep)}")
            if not all(0 < k <= 1 for k in self.stage_keep):
                raise _bad("stage_keep", "fractions must lie in (0, 1]")
        if self.min_rate > self.max_rate:
            raise _bad("min_rate", f"{self.min_rate} is above max_rate {self.max_rate}")
        if len(set(self.operator)) != len(self.operator):
            raise _bad("operator", f"lists a name twice: {self.operator}")
        uses_llm = "llm" in self.operator
        if uses_llm and self.llm is None:
            self.llm = "self"  # the model being pruned writes its own genomes
        if not uses_llm and (self.llm is not None or self.llm_base_url is not None):
            raise _bad("llm" if self.llm is not None else "llm_base_url",
                       "is set but no 'llm' operator runs; add llm to search.operator or drop it")
        if self.llm is not None:
            kind, _, arg = self.llm.partition(":")
            if not (self.llm == "self" or (kind in ("local", "openai") and arg)):
                raise _bad("llm", f"'{self.llm}' is not one of: self, local:PATH, openai:MODEL")
            if self.llm_base_url and kind != "openai":
                raise _bad("llm_base_url", "needs llm: openai:MODEL (the model name the server serves)")
        return self


class EvalSection(Section):
    """Quality of the dense and pruned models (as ``selfprune eval``)."""

    ppl: str | None = Field("auto", description="perplexity text: wikitext2 (hub), a text FILE, auto (wikitext2 when "
                            "it can be loaded, else skipped with a warning), or null (skip)")
    seqlen: int = Field(512, ge=2, description="tokens per perplexity window")
    max_windows: int | None = Field(8, ge=1, description="score only the first N windows (null: the whole text)")
    stride: int | None = Field(None, ge=1, description="window stride (default: seqlen, no overlap)")
    tasks: list[str] = Field(["piqa", "arc_easy"], description="zero-shot tasks (lm-eval), or 'all'; [] skips zero-shot")
    limit: int | None = Field(50, ge=1, description="documents per zero-shot task (null: all; not comparable to papers)")
    task_source: Literal["offline", "hub"] = Field("offline", description="offline task data or lm-eval's hub datasets")
    batch_size: int | None = Field(None, ge=1, description="batch size: perplexity windows (default: 2048 tokens' "
                                   "worth) and lm-eval (default 16)")
    dense: bool = Field(True, description="also evaluate the dense model, for the comparison table")

    @field_validator("tasks", mode="before")
    @classmethod
    def _split(cls, v):
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        return list(ALL_TASKS) if v == ["all"] else v

    @model_validator(mode="after")
    def _consistent(self):
        if self.stride is not None and self.stride > self.seqlen:
            raise _bad("stride", f"{self.stride} is longer than seqlen {self.seqlen}")
        if self.task_source == "offline":
            unknown = [t for t in self.tasks if t not in ALL_TASKS]
            if unknown:
                raise _bad("tasks", f"unknown offline task(s) {', '.join(unknown)}; known: {', '.join(ALL_TASKS)} "
                                    "(other lm-eval tasks need task_source: hub)")
        return self


class BenchSection(Section):
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
        return [int(s) for s in v.split(",")] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self):
        if not self.shapes or any(b < 1 or s < 1 for b, s in self.shapes):
            raise _bad("shapes", "needs at least one shape with positive batch and sequence")
        if any(b < 1 for b in self.decode_batches):
            raise _bad("decode_batches", "must be positive")
        return self


class OutputSection(Section):
    """Where the run writes, and how much it says."""

    dir: str | None = Field(None, description="the run directory (new or empty)")
    log_file: str | None = Field(None, description="log file (default: DIR/run.log)")
    quiet: bool = Field(False, description="no progress bars; only the summary at the end")
    save_model: bool = Field(True, description="save the pruned checkpoint in DIR/model")


class RunConfig(Section):
    """Everything a run needs; ``model`` and ``ratio`` have no default."""

    preset: Literal["quick", "paper"] = Field("quick", description="quick (minutes on a CPU) or paper (Self-Pruner's budget)")
    model: str = Field(description="a local model directory, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    ratio: float = Field(description="target fraction of attention/MLP parameters to remove, in [0, 1)")
    seed: int = Field(0, description="seed of calibration sampling, the search and the benchmark")
    device: str | None = Field(None, description="torch device, e.g. cuda (default: cuda when present, else cpu)")
    prune: PruneSection = PruneSection()
    search: SearchSection = SearchSection()
    eval: EvalSection = EvalSection()
    bench: BenchSection = BenchSection()
    output: OutputSection = OutputSection()

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"ratio {v} is outside [0, 1): it is the fraction of attention/MLP parameters to remove")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        s = self.search
        if not s.min_rate - 1e-9 <= self.ratio <= s.max_rate + 1e-9:
            raise _bad("ratio", f"{self.ratio} lies outside search.min_rate..max_rate [{s.min_rate}, {s.max_rate}]")
        return self

    def to_yaml(self) -> str:
        return yaml.dump(self.model_dump(mode="json"), Dumper=_Dumper, sort_keys=False, width=100)


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, short lists of numbers/names inline: a config that reads like a form."""


def _list(dumper: yaml.SafeDumper, data: list):
    flow = all(not isinstance(x, dict) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _list)
_Dumper.add_representer(tuple, _list)


# The paper preset: Self-Pruner's search budget (population 30, 20 generations, 10+10 offspring,
# the LLM operator on the model itself) and full evaluation (all windows, all seven tasks).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": {
        "prune": {"calib_samples": 128, "calib_seqlen": 128},
        "search": {"operator": ["llm"], "population": 30, "generations": 20, "crossover": 10, "mutation": 10,
                   "fitness_samples": [4, 16], "fitness_seqlen": 128, "stage_keep": [0.5]},
        "eval": {"seqlen": 128, "max_windows": None, "tasks": list(ALL_TASKS), "limit": None},
        "bench": {"shapes": [[1, 128], [1, 512], [8, 128]], "decode_batches": [1, 8], "warmup": 2, "repeats": 5},
    },
}


def merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, section by section."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SelfpruneError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SelfpruneError(f"config file '{path}' is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SelfpruneError(f"config file '{path}' must hold a mapping of fields, not a {type(data).__name__}")
    return data


def resolve(file_data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < preset < YAML data < overrides (nested dicts of the same shape) -> RunConfig."""
    data = merge(file_data or {}, overrides or {})
    preset = data.get("preset", "quick")
    if preset not in PRESETS:
        raise SelfpruneError(f"config field 'preset': unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    try:
        return RunConfig.model_validate(merge(PRESETS[preset], data))
    except ValidationError as exc:
        raise SelfpruneError(describe_errors(exc)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    return resolve(read_yaml(path) if path else {}, overrides)


def describe_errors(exc: ValidationError) -> str:
    """One line naming every bad field, with a suggestion for misspelt ones."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"] if not isinstance(x, int)]
        field = ".".join(loc) or "config"
        if err["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(known)}"
            parts.append(f"unknown field '{field}'{hint}")
        elif err["type"] == "missing":
            parts.append(f"field '{field}' is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if msg.startswith(_FIELD_TAG):
                _, name, msg = msg.split(_FIELD_TAG, 2)
                field = f"{field}.{name}" if loc else name
            given = err.get("input")
            shown = "" if isinstance(given, (dict, list)) or err["type"].startswith("value_error") else f" (got {given!r})"
            parts.append(f"field '{field}': {msg}{shown}")
    return "invalid config: " + "; ".join(parts)


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for name in loc:
        ann = model.model_fields[name].annotation
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def field_paths() -> dict[str, tuple[str, ...]]:
    """Every leaf field of the config as {dotted.path: (section, name)} (sections' fields nested)."""
    out = {}
    for name, info in RunConfig.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            for sub in ann.model_fields:
                out[f"{name}.{sub}"] = (name, sub)
        else:
            out[name] = (name,)
    return out
