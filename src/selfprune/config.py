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
from selfprune.eval.options import BenchOptions, EvalOptions
from selfprune.eval.zeroshot import TASKS
from selfprune.evolution.options import SearchOptions
from selfprune.export.gguf import OUTTYPES
from selfprune.options import FIELD_TAG, Options, bad
from selfprune.pruning.options import PruneOptions
from selfprune.recover.options import RecoverStageOptions


class OutputOptions(Options):
    """Where a job writes, and how much it says."""

    dir: str | None = Field(None, description="the output directory (new or empty)")
    log_file: str | None = Field(None, description="log file (default: DIR/run.log)")
    quiet: bool = Field(False, description="no progress bars; only the summary at the end")
    save_model: bool = Field(True, description="save the pruned checkpoint in DIR/model")
    export: Literal["none", "gguf"] = Field("none", description="also write the pruned model for another runtime: "
                                            "gguf (DIR/model.gguf, for llama.cpp and Ollama)")
    export_outtype: Literal[OUTTYPES] = Field("f16", description="tensor type of the GGUF export's weights "
                                              "(norms and biases stay f32)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.export != "none" and not self.save_model:
            raise bad("export", "needs the saved checkpoint; drop --no-save-model")
        return self


# Flags whose name is not simply the field's name (kept equal across subcommands).
FLAG_NAMES = {
    "output.dir": "--out",
    "bench.enabled": "--bench",
    "eval.dense": "--eval-dense",
    "output.export_outtype": "--outtype",
    # Recovery's fields share names with other sections' (seqlen, batch): prefixed.
    "recover.enabled": "--recover",
    **{f"recover.{name}": f"--recover-{name}" for name in ("method", "tokens", "seqlen", "batch", "lr", "data")},
}


def flag_for(path: str) -> str:
    return FLAG_NAMES.get(path) or "--" + path.rsplit(".", 1)[-1].replace("_", "-")


class RunConfig(BaseModel):
    """Everything a run needs; ``model`` and ``ratio`` have no default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    preset: str = Field("quick", description="quick (minutes on a CPU), paper (Self-Pruner's budget) or paper-recover (paper, then distillation)")
    model: str = Field(description="a local model directory, a .gguf file, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    ratio: float = Field(description="target fraction of attention/MLP parameters to remove, in [0, 1)")
    seed: int = Field(0, description="seed of calibration sampling, the search and the benchmark")
    device: str | None = Field(None, description="torch device, e.g. cuda (default: cuda when present, else cpu)")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="weights' dtype: float32, bfloat16 (GPUs), float16, or auto (the checkpoint's own)")
    device_map: str | None = Field(None, description="shard the model over the visible GPUs (auto, balanced, sequential; "
                                   "the CPU as a last resort) or a JSON file of module -> device; replaces device")
    trust_remote_code: bool = Field(False, description="run Python code that the model ships (named by its config's "
                                    "auto_map); selfprune's pruned checkpoints never need it")
    prune: PruneOptions = PruneOptions()
    search: SearchOptions = SearchOptions()
    eval: EvalOptions = EvalOptions()
    bench: BenchOptions = BenchOptions()
    recover: RecoverStageOptions = RecoverStageOptions()
    output: OutputOptions = OutputOptions()

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v):
        if not 0.0 <= v < 1.0:
            raise ValueError(f"ratio {v} is outside [0, 1): it is the fraction of attention/MLP parameters to remove")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.device_map is not None and self.device is not None:
            raise bad("device_map", "places the model itself; drop device")
        s = self.search
        if not s.min_rate - 1e-9 <= self.ratio <= s.max_rate + 1e-9:
            raise bad("ratio", f"{self.ratio} lies outside search.min_rate..max_rate [{s.min_rate}, {s.max_rate}]")
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
# the LLM operator on the model itself) and full evaluation (all windows, all seven tasks). Its
# fitness is the measured default (2 x 512 tokens, one stage): 128-token blocks ranked candidates
# worse and a staged fitness did not help at this budget (docs/search.md). Like the paper's (WikiText-2
# perplexity), its calibration and fitness text is Wikipedia: offline, the wiki-passages, which ranked
# candidates closer to held-out WikiText-2 than LAMBADA and no worse on CoQA stories (docs/search.md).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {},
    "paper": {
        "prune": {"calib": "wiki-passages", "calib_samples": 128, "calib_seqlen": 128},
        "search": {"operator": ["llm"], "population": 30, "generations": 20, "crossover": 10, "mutation": 10},
        "eval": {"seqlen": 128, "max_windows": None, "tasks": list(TASKS), "limit": None},
        "bench": {"shapes": [[1, 128], [1, 512], [8, 128]], "decode_batches": [1, 8], "warmup": 2, "repeats": 5},
    },
}
# EvoPress's own search settings (IST-DASLab/EvoPress: KL to the dense model, (1+lambda) with lambda 64,
# survivors 8, 2, 1 on stages of growing token counts, 1:4:16 here as in its smaller scripts) at the
# paper's budget of 430 evaluations; the comparisons in docs/search.md run every operator on one shared
# single-stage perplexity fitness instead, so that only the operator differs.
PRESETS["evopress"] = {"search": {"operator": ["evopress"], "fitness": "kl", "fitness_samples": [2, 8, 32],
                                  "max_evals": 430}}
# The paper's run, then distillation toward the dense model on a million tokens (docs/recover.md).
PRESETS["paper-recover"] = {**PRESETS["paper"], "recover": {"enabled": True, "tokens": 1_000_000}}


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
    except UnicodeDecodeError:
        raise SelfpruneError(f"config file '{path}' is not UTF-8 text; pass a YAML file "
                             "(selfprune run --dump-config FILE writes one)") from None
    except OSError as exc:
        raise SelfpruneError(f"cannot read config file '{path}' ({exc.strerror}); pass a readable YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SelfpruneError(f"config file '{path}' is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SelfpruneError(f"config file '{path}' must hold a mapping of fields, not a {type(data).__name__}")
    return data


def resolve(file_data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            flags: bool = False) -> RunConfig:
    """Defaults < preset < YAML data < overrides (nested dicts of the same shape) -> RunConfig."""
    data = merge(file_data or {}, overrides or {})
    preset = data.get("preset", "quick")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise SelfpruneError(f"config field 'preset': unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    try:
        return RunConfig.model_validate(merge(PRESETS[preset], data))
    except ValidationError as exc:
        raise SelfpruneError(describe_errors(exc, flags=flags)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                flags: bool = False) -> RunConfig:
    """The resolved config; ``flags``: errors name command-line flags rather than config fields."""
    return resolve(read_yaml(path) if path else {}, overrides, flags)


def describe_errors(exc: ValidationError, section: str | None = None, flags: bool = False) -> str:
    """One line naming every bad field (or, with ``flags``, its command-line flag), with a
    suggestion for misspelt ones. ``section``: the errors are of that section's options alone."""
    def name(path: str) -> str:
        if not flags:
            return f"field '{path}'"
        return f"option {flag_for(path)}"

    parts = []
    for err in exc.errors():
        loc = [section] * bool(section) + [str(x) for x in err["loc"] if not isinstance(x, int)]
        field = ".".join(loc) or "config"
        if err["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known fields: {', '.join(known)}"
            parts.append(f"unknown field '{field}'{hint}")
        elif err["type"] == "missing":
            parts.append(f"{name(field)} is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if msg.startswith(FIELD_TAG):
                _, tagged, msg = msg.split(FIELD_TAG, 2)
                field = f"{field}.{tagged}" if loc else tagged
            given = err.get("input")
            shown = "" if isinstance(given, (dict, list)) or err["type"].startswith("value_error") else f" (got {given!r})"
            parts.append(f"{name(field)}: {msg}{shown}")
    return ("invalid options: " if flags else "invalid config: ") + "; ".join(parts)


def top_level_value(name: str, value: Any):
    """A top-level field (``seed``, ``device``, ...) given alone, validated like in a config."""
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(RunConfig.model_fields[name].annotation).validate_python(value)
    except ValidationError as exc:
        raise SelfpruneError(f"invalid options: option --{name}: {exc.errors()[0]['msg']} (got {value!r})") from None


def section_options(section: str, data: dict[str, Any], flags: bool = True):
    """One section's options (e.g. ``PruneOptions`` for "prune") from ``data``, or a clear error."""
    cls = RunConfig.model_fields[section].annotation
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise SelfpruneError(describe_errors(exc, section, flags)) from None


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
