"""Speed of models side by side: prefill latency, decode throughput, memory, parameters, MACs.

Models are measured interleaved (every repeat visits each model in turn), after warm-up runs, and
the median over repeats is kept, so drifts of the machine (frequency, other load) hit all models
alike. Prefill is one forward over the prompt that fills the KV cache and returns the next token's
logits (as ``generate`` does); decode is greedy one-token steps on that cache. Each model is
compared with the first one (the baseline): measured speed-up, the ideal speed-up
(baseline params / model params) and their ratio.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from selfprune.models.kv_cache import cache_kwarg, cache_of

DEFAULT_PREFILL_SHAPES = ((1, 128), (1, 512), (8, 128))  # (batch, sequence)
DEFAULT_DECODE_BATCHES = (1, 8)
DEFAULT_PROMPT_LEN = 32
DEFAULT_DECODE_TOKENS = 32
MACS_SEQLEN = 128


def count_params(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def weights_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


@torch.inference_mode()
def count_macs(model, seqlen: int = MACS_SEQLEN) -> int:
    """Multiply-accumulates of the linear layers in one forward over ``seqlen`` tokens (all logits).

    Counted from the layers that actually run, so removed heads, channels and whole blocks drop
    out. The attention score products (QK^T, AV) are left out: they depend on the sequence length,
    not on the weights, and are a few percent at 128 tokens.
    """
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += inputs[0].numel() // module.in_features * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        model(input_ids=torch.zeros(1, seqlen, dtype=torch.long, device=_device(model)), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return total


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def peak_memory(device: torch.device):
    """Peak memory above what was resident when entering (activations, KV cache), in bytes.

    CUDA: the allocator's peak. CPU (Linux): the process's peak RSS, reset through /proc.
    """
    box = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        torch.cuda.synchronize(device)
        box["bytes"] = torch.cuda.max_memory_allocated(device) - base
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _proc_status_kb("VmRSS")
    except OSError:
        yield box  # not Linux: peak memory unknown
        return
    yield box
    box["bytes"] = max(0, _proc_status_kb("VmHWM") - base) * 1024


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def _prefill(model, ids):
    return model(input_ids=ids, use_cache=True, logits_to_keep=1)


def _time_prefill(model, ids) -> float:
    device = ids.device
    _sync(device)
    start = time.perf_counter()
    _prefill(model, ids)
    _sync(device)
    return time.perf_counter() - start


def _time_decode(model, prompt, steps: int) -> float:
    """Seconds for ``steps`` greedy one-token steps after an (untimed) prefill of ``prompt``."""
    out = _prefill(model, prompt)
    cache, token, kwarg = cache_of(out), out.logits[:, -1:].argmax(-1), cache_kwarg(model)
    _sync(prompt.device)
    start = time.perf_counter()
    for _ in range(steps):  # one forward per generated token: that is what decoding is
        out = model(input_ids=token, use_cache=True, **{kwarg: cache})
        cache, token = cache_of(out), out.logits[:, -1:].argmax(-1)
    _sync(prompt.device)
    return time.perf_counter() - start


@torch.inference_mode()
def speed(
    models: dict,
    prefill_shapes=DEFAULT_PREFILL_SHAPES,
    decode_batches=DEFAULT_DECODE_BATCHES,
    prompt_len: int = DEFAULT_PROMPT_LEN,
    decode_tokens: int = DEFAULT_DECODE_TOKENS,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Benchmark ``models`` ({name: model}, the first is the baseline) side by side.

    Returns {"models": {name: measurements}, "comparison": {name: speed-ups}, "protocol": {...}}.
    """
    if not models:
        raise ValueError("speed() needs at least one model")
    names = list(models)
    device = _device(models[names[0]])
    vocab = min(m.config.vocab_size for m in models.values())
    gen = torch.Generator().manual_seed(seed)

    def random_ids(batch, seq):
        return torch.randint(0, vocab, (batch, seq), generator=gen).to(device)

    rows = {
        name: {"params": count_params(m), "macs": count_macs(m), "weights_mb": weights_bytes(m) / 2**20,
               "prefill_ms": {}, "decode_tok_s": {}, "peak_mb": None}
        for name, m in models.items()
    }

    def interleaved(measure) -> dict[str, float]:
        for name in names:
            for _ in range(warmup):
                measure(models[name])
        times = {name: [] for name in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                times[name].append(measure(models[name]))
        return {name: statistics.median(t) for name, t in times.items()}

    for batch, seq in prefill_shapes:
        ids = random_ids(batch, seq)
        for name, t in interleaved(lambda m: _time_prefill(m, ids)).items():
            rows[name]["prefill_ms"][f"{batch}x{seq}"] = t * 1000
    for batch in decode_batches:
        prompt = random_ids(batch, prompt_len)
        for name, t in interleaved(lambda m: _time_decode(m, prompt, decode_tokens)).items():
            rows[name]["decode_tok_s"][str(batch)] = batch * decode_tokens / t

    # Peak memory of the heaviest prefill shape plus a decode at the largest batch, per model.
    big_batch, big_seq = max(prefill_shapes, key=lambda s: s[0] * s[1])
    for name, m in models.items():
        with peak_memory(device) as peak:
            _prefill(m, random_ids(big_batch, big_seq))
            _time_decode(m, random_ids(max(decode_batches), prompt_len), decode_tokens)
        if peak["bytes"] is not None:
            rows[name]["peak_mb"] = rows[name]["weights_mb"] + peak["bytes"] / 2**20

    return {"models": rows, "comparison": compare(rows, names[0]), "protocol": {
        "baseline": names[0],
        "device": str(device),
        "dtype": str(next(models[names[0]].parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "prefill": "forward over random prompt tokens, KV cache filled, logits of the last position",
        "prefill_shapes": [list(s) for s in prefill_shapes],
        "decode": f"greedy, {decode_tokens} tokens after a {prompt_len}-token prompt, KV cache",
        "decode_batches": list(decode_batches),
        "warmup": warmup,
        "repeats": repeats,
        "statistic": "median over repeats; models interleaved, starting model rotated each repeat",
        "macs": f"linear layers, one forward of 1x{MACS_SEQLEN} tokens with all logits",
        "peak_mb": "weights + peak memory above resident during the largest prefill and a decode "
                   "(CUDA allocator peak, or process peak RSS on CPU)",
        "ideal_speedup": "baseline params / model params",
        "seed": seed,
    }}


def compare(rows: dict, baseline: str) -> dict:
    """Measured speed-ups against ``baseline``, the ideal from parameter counts, and their ratio."""
    base = rows[baseline]
    out = {}
    for name, row in rows.items():
        ideal = base["params"] / row["params"]
        prefill = {k: base["prefill_ms"][k] / v for k, v in row["prefill_ms"].items()}
        decode = {k: v / base["decode_tok_s"][k] for k, v in row["decode_tok_s"].items()}
        out[name] = {
            "ideal": ideal,
            "macs_ratio": base["macs"] / row["macs"],
            "prefill_speedup": prefill,
            "decode_speedup": decode,
            "prefill_vs_ideal": {k: v / ideal for k, v in prefill.items()},
            "decode_vs_ideal": {k: v / ideal for k, v in decode.items()},
        }
    return out
