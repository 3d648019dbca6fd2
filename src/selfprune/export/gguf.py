"""Export a pruned checkpoint (or a dense model directory) to one GGUF file for llama.cpp.

``export_gguf`` checks everything it can before writing, writes through a temporary file beside
the target and renames it at the end: a failed export leaves no file behind. Which llama.cpp
architecture each family maps to, and what cannot be expressed, is in ``graphs``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from selfprune.errors import SelfpruneError

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def _file_type(outtype: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def encode(name: str, t, outtype: str):
    """(data, GGML type) of one tensor: norms, biases and rope factors stay float32, as llama.cpp expects."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    data = t.detach().cpu().numpy().astype(np.float32, copy=False)
    if data.ndim == 1 or outtype == "f32":
        return data, Q.F32
    if outtype == "bf16":
        return gguf.quants.quantize(data, Q.BF16), Q.BF16
    if outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0
    # f16, and q8_0 rows that do not split into 32-value blocks (e.g. a one-channel constant block)
    return data.astype(np.float16), Q.F16


def check_out_path(out_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output file's path, or a SelfpruneError if it cannot be written. An existing file is
    replaced only when it is a GGUF file and ``overwrite`` is set; any other file is never touched."""
    out = Path(out_path).expanduser()
    if out.is_dir():
        raise SelfpruneError(f"output '{out}' is a directory; pass a file name such as model.gguf")
    if out.exists() or out.is_symlink():
        if not _is_gguf_file(out):
            raise SelfpruneError(f"output '{out}' exists and is not a GGUF file; nothing is written over it: pass a "
                                 "new file name such as model.gguf")
        if not overwrite:
            raise SelfpruneError(f"output '{out}' already exists; pass --overwrite to replace it, or a new file name")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise SelfpruneError(f"cannot write '{out}': folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SelfpruneError(f"cannot write '{out}': folder {parent} is not writable")
    if out.exists() and not os.access(out, os.W_OK):
        raise SelfpruneError(f"cannot write '{out}': the file exists and is read-only")
    return out


def _is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return path.is_file() and fh.read(4) == b"GGUF"
    except OSError:
        return False


def export_gguf(pruned_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "f16",
                overwrite: bool = False) -> dict:
    """Write ``pruned_dir`` (a selfprune checkpoint or a dense model directory) as a GGUF file.

    Returns a summary: path, bytes, outtype, arch, family, tensors, per-layer shapes as written,
    tokenizer and notes (e.g. removed blocks written as constant blocks). Raises SelfpruneError for
    anything the file could not express exactly; then no file is written.
    """
    import gguf

    from selfprune.export.gguf_vocab import read_vocab
    from selfprune.export.graphs import MODEL_TYPES, target_for
    from selfprune.export.source import ModelSource

    if outtype not in OUTTYPES:
        raise SelfpruneError(f"unknown outtype '{outtype}'; choose one of {', '.join(OUTTYPES)}")
    out = check_out_path(out_path, overwrite)
    src = ModelSource(pruned_dir, MODEL_TYPES)
    target = target_for(src)  # all structural checks happen here, before anything is written
    n_vocab = int(src.tensor("model.embed_tokens.weight").shape[0])
    vocab = read_vocab(src.path, n_vocab)

    fd, tmp_name = tempfile.mkstemp(dir=out.resolve().parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), target.arch)
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(_model_name(src))
        writer.add_file_type(_file_type(outtype))
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        target.write_hparams(writer, n_vocab)
        vocab.write(writer)
        n_tensors, n_params, fallback = 0, 0, []
        for name, t in target.tensors():
            data, qtype = encode(name, t, outtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            n_tensors += 1
            n_params += t.numel()
            if outtype == "q8_0" and qtype.name == "F16" and t.shape[-1] > 1:  # constant blocks are 1 wide
                fallback.append(name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result gets ordinary permissions
        os.replace(tmp, out)
    except OSError as exc:
        raise SelfpruneError(f"cannot write '{out}': {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "outtype": outtype,
        "arch": target.arch,
        "family": src.model_type,
        "pruned": src.pruned,
        "tensors": n_tensors,
        "params": n_params,
        "layers": [layer.describe() for layer in target.layout],
        "tokenizer": vocab.describe(),
        "notes": list(target.notes) + _fallback_note(fallback),
    }


def _fallback_note(names: list[str]) -> list[str]:
    if not names:
        return []
    return [f"{len(names)} matrices stored as f16, not q8_0: their rows are not a multiple of 32 values "
            f"(e.g. {names[0]}); prune with --mlp-multiple 32 to quantize them all"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _model_name(src) -> str:
    if not src.pruned:
        return src.path.name
    base = (src.record or {}).get("base_model")
    return f"{src.path.name} (pruned from {base} by selfprune)" if base else f"{src.path.name} (pruned by selfprune)"
