"""LLM-Pruner (Ma et al., 2023) as a peer baseline, run through the library it is built on, Torch-Pruning.

LLM-Pruner's structured pruning: coupled structures found by a dependency graph (attention heads with
their q/k/v/o rows and columns; MLP channels with their gate/up rows and down column), scored by
first-order Taylor importance |w * dL/dw| summed over each group ("param_first"), from the gradients of
the language-modelling loss on calibration text, and removed at the same ratio in every decoder layer
(the paper's block-wise setting). The hidden size, the embeddings and the LM head are kept.

Torch-Pruning's GQA rule (``BasePruner`` with ``num_heads`` and ``prune_num_heads=True``, local pruning)
removes the same number of query heads from every KV group and keeps every KV head, so the pruned layer
is still a valid GQA layer. It silently skips a layer whose pruning would leave one query head per KV
group, so at most ``heads/kv_heads - 2`` query heads go from each group (none for plain MHA or groups of
2). Heads are coarse, so the head count is chosen first (closest to the ratio) and the MLP ratio then
absorbs the rest of the parameter budget.

Tracing note: Torch-Pruning 1.6.1 never finishes grouping a transformers 5.x Llama-style layer: its index
mapping loops through RoPE's ``rotate_half`` (slice, slice, concat), the indices growing without end (the
hang of Torch-Pruning issue #527), and it maps SDPA's fused GQA 1:1 from query to KV channels (out of
range). While the dependency graph is traced, and only then, attention runs its eager path (repeat_kv,
which the graph maps correctly) and ``rotate_half`` is computed as the same permutation written as a
product with a constant signed permutation matrix, which the graph sees as one element-wise op. The model, its gradients and every pruning decision are
untouched by this; the selection and the surgery are Torch-Pruning's. A grouping that still does not
finish within ``trace_timeout`` seconds raises ``PeerFailed``.

Usage: ``python benchmarks/peer_llm_pruner.py [--ratio 0.3] [--samples 8] [--seqlen 256]`` measures the
default model (achieved ratio, seconds, WikiText-2 perplexity).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import warnings

import torch

LIBRARY = "torch-pruning 1.6.1"


class PeerFailed(Exception):
    """Torch-Pruning could not prune this model; the message is the library's error in one line."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or repr(error)
    return f"{type(error).__name__}: {text}"[:300]


def _layers(model):
    try:
        return list(model.model.layers)
    except AttributeError:
        raise PeerFailed(f"no decoder layers at model.model.layers in {type(model).__name__}") from None


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _head_dim(attn, config) -> int:
    head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    return int(head_dim or config.hidden_size // config.num_attention_heads)


def _layer_shape(layer, config) -> dict:
    attn, mlp = layer.self_attn, layer.mlp
    d = _head_dim(attn, config)
    return {"heads": attn.q_proj.out_features // d, "kv_heads": attn.k_proj.out_features // d,
            "mlp": mlp.gate_proj.out_features, "attn_params": _numel(attn), "mlp_params": _numel(mlp)}


def _layer_plan(layer, config, ratio: float) -> tuple[int, int]:
    """(query heads to remove per KV group, MLP channels to remove) so that the removed share of this
    layer's attention+MLP parameters is as close to ``ratio`` as the granularity allows."""
    attn, mlp = layer.self_attn, layer.mlp
    shape = _layer_shape(layer, config)
    heads, kv_heads, inter = shape["heads"], shape["kv_heads"], shape["mlp"]
    group = heads // kv_heads
    q_params = attn.q_proj.weight.numel() + (attn.q_proj.bias.numel() if attn.q_proj.bias is not None else 0)
    per_head = (q_params + attn.o_proj.weight.numel()) / heads  # q rows (+ bias) and o columns
    per_channel = (_numel(mlp.gate_proj) + _numel(mlp.up_proj)) / inter + mlp.down_proj.weight.numel() / inter
    budget = ratio * (shape["attn_params"] + shape["mlp_params"])

    def channels(k: int) -> int:
        return math.floor((budget - k * kv_heads * per_head) / per_channel + 0.5)

    # Torch-Pruning 1.6.1 silently skips a head group whose pruning would leave one query head per KV group
    # (it then takes the layer for plain MHA and its group check fails): keep >= 2 per group, or all if 1.
    feasible = [k for k in range(max(group - 1, 1)) if 0 <= channels(k) < inter]
    if not feasible:
        raise PeerFailed(f"ratio {ratio} cannot be reached keeping one query head per KV group and one channel")
    k = min(feasible, key=lambda k: (abs(k / group - ratio), k))
    return k, channels(k)


def _rotate_half_by_matrix(x: torch.Tensor) -> torch.Tensor:
    """``rotate_half`` (cat(-x2, x1)) as ``x @ R``; the same values, one op for the dependency graph."""
    d, h = x.shape[-1], x.shape[-1] // 2
    rotation = torch.zeros(d, d, dtype=x.dtype, device=x.device)
    rotation[h:, :h] = -torch.eye(h, dtype=x.dtype, device=x.device)
    rotation[:h, h:] = torch.eye(h, dtype=x.dtype, device=x.device)
    return x @ rotation


@contextlib.contextmanager
def _traceable_rope(layers):
    """While tracing, the modeling modules of the attention layers compute rotate_half by a matrix."""
    modules = {sys.modules[type(layer.self_attn).__module__] for layer in layers}
    saved = {mod: mod.rotate_half for mod in modules if hasattr(mod, "rotate_half")}
    try:
        for mod in saved:
            mod.rotate_half = _rotate_half_by_matrix
        yield
    finally:
        for mod, fn in saved.items():
            mod.rotate_half = fn


@contextlib.contextmanager
def _eager_attention(model):
    """Trace the eager attention path: its repeat_kv (expand + reshape) is what maps query heads to their
    KV head in Torch-Pruning's graph; SDPA's fused GQA hands q and k/v to one op the graph reads 1:1."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@contextlib.contextmanager
def _time_limit(seconds: float | None, what: str):
    """Raise PeerFailed if the block runs longer than ``seconds`` (main thread only; else no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise PeerFailed(f"torch-pruning: {what} did not finish in {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _taylor_gradients(model, blocks: torch.Tensor, batch_size: int) -> None:
    """Accumulate the gradients of the mean language-modelling loss over ``blocks`` on the weights."""
    model.zero_grad(set_to_none=True)
    n = blocks.shape[0]
    for start in range(0, n, batch_size):
        batch = blocks[start:start + batch_size]
        loss = model(input_ids=batch, labels=batch).loss * (batch.shape[0] / n)
        loss.backward()


def _fix_modules(model, layers, shapes) -> None:
    """Make the per-layer attention modules and the config agree with the pruned weights."""
    config = model.config
    for layer, shape in zip(layers, shapes):
        attn = layer.self_attn
        attn.num_key_value_groups = shape["heads"] // shape["kv_heads"]
        for name, value in (("num_heads", shape["heads"]), ("num_key_value_heads", shape["kv_heads"])):
            if hasattr(attn, name):
                setattr(attn, name, value)
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = shape["mlp"]
    if len({(s["heads"], s["kv_heads"], s["mlp"]) for s in shapes}) == 1:
        config.head_dim = _head_dim(layers[0].self_attn, config)  # explicit before num_attention_heads changes
        config.num_attention_heads = shapes[0]["heads"]
        config.num_key_value_heads = shapes[0]["kv_heads"]
        config.intermediate_size = shapes[0]["mlp"]


def prune_llm_pruner(model, blocks: torch.Tensor, ratio: float, seed: int = 0, batch_size: int = 2,
                     trace_timeout: float | None = 300) -> dict:
    """Prune a Hugging Face causal LM (Llama/Qwen2/Mistral-style decoder, GQA) in place with LLM-Pruner's
    method through Torch-Pruning 1.6.1.

    Every decoder layer is pruned, at the same ratio (LLM-Pruner's block-wise setting, here over all layers
    so that parameter counts compare with the other methods): whole query heads (the same number from each
    KV group; KV heads are kept, as Torch-Pruning's GQA rule does) and MLP channels, chosen by group Taylor
    importance (|w * grad| summed over the coupled weights) from the language-modelling loss on ``blocks``
    ((n, seqlen) token ids, in batches of ``batch_size``). ``ratio`` is the fraction of the decoder layers'
    attention+MLP parameters to remove; the head count is picked closest to ``ratio`` and the MLP width
    absorbs the rest of the budget. Raises ``PeerFailed`` with the library's error when Torch-Pruning
    cannot prune the model, or when its dependency grouping runs past ``trace_timeout`` seconds."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise PeerFailed(f"torch-pruning is not installed ({e}): pip install -e '.[peers]'") from None

    torch.manual_seed(seed)
    config = model.config
    layers = _layers(model)
    try:
        before = [_layer_shape(layer, config) for layer in layers]
    except AttributeError as e:
        raise PeerFailed(f"not a q/k/v/o + gate/up/down decoder: {_one_line(e)}") from None
    plans = [_layer_plan(layer, config, ratio) for layer in layers]

    device = next(model.parameters()).device
    blocks = blocks.to(device=device, dtype=torch.long)
    was_training = model.training
    model.eval()
    requires_grad = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(True)

    num_heads, head_ratios, ratios = {}, {}, {}
    for layer, shape, (k, channels) in zip(layers, before, plans):
        attn, mlp = layer.self_attn, layer.mlp
        num_heads[attn.q_proj] = shape["heads"]
        num_heads[attn.k_proj] = shape["kv_heads"]
        num_heads[attn.v_proj] = shape["kv_heads"]
        # Torch-Pruning removes ceil(ceil(r * heads) / kv_heads) query heads per KV group: aim mid-step.
        head_ratios[attn] = (k * shape["kv_heads"] - 0.5) / shape["heads"] if k else 0.0
        # Only whole heads go (prune_head_dims=False); the attention scope needs a non-zero ratio to run.
        ratios[attn] = 0.5
        # It keeps int(inter * (1 - r)) channels: aim half a channel below the exact count.
        ratios[mlp] = (channels - 0.5) / shape["mlp"] if channels else 0.0

    embeddings = model.get_input_embeddings()
    ignored = [m for m in (embeddings, model.get_output_embeddings()) if m is not None]
    example = blocks[:1, : min(blocks.shape[1], 16)]
    try:
        with _time_limit(trace_timeout, "dependency graph and grouping"), _traceable_rope(layers), \
                _eager_attention(model), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # norms: hidden size is kept
            pruner = tp.pruner.BasePruner(
                model,
                example_inputs=example,
                importance=tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None),
                global_pruning=False,
                pruning_ratio=0.0,
                pruning_ratio_dict=ratios,
                ignored_layers=ignored,
                num_heads=num_heads,
                prune_num_heads=True,
                prune_head_dims=False,
                head_pruning_ratio=0.0,
                head_pruning_ratio_dict=head_ratios,
                output_transform=lambda out: out.logits,
            )
        _taylor_gradients(model, blocks, batch_size)
        with _time_limit(trace_timeout, "grouping"):
            for group in pruner.step(interactive=True):
                group.prune()
    except PeerFailed:
        raise
    except Exception as e:  # the library's own failure, reported as such
        raise PeerFailed(f"torch-pruning: {_one_line(e)}") from e
    finally:
        model.zero_grad(set_to_none=True)
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        model.train(was_training)

    after = [_layer_shape(layer, config) for layer in layers]
    for i, (layer, b, a, (k, channels)) in enumerate(zip(layers, before, after, plans)):
        want = (b["heads"] - k * b["kv_heads"], b["kv_heads"], b["mlp"] - channels)
        got = (a["heads"], a["kv_heads"], a["mlp"])
        if got != want or layer.self_attn.o_proj.in_features != layer.self_attn.q_proj.out_features:
            raise PeerFailed(f"torch-pruning left layer {i} with heads/kv/mlp {got}, expected {want}")
    _fix_modules(model, layers, after)

    dense = sum(s["attn_params"] + s["mlp_params"] for s in before)
    attn_params = sum(s["attn_params"] for s in after)
    mlp_params = sum(s["mlp_params"] for s in after)
    return {
        "achieved_ratio": 1 - (attn_params + mlp_params) / dense,
        "requested_ratio": ratio,
        "dense_params": dense,
        "attn_params": attn_params,
        "mlp_params": mlp_params,
        "heads": [s["heads"] for s in after],
        "kv_heads": [s["kv_heads"] for s in after],
        "mlp": [s["mlp"] for s in after],
        "library": LIBRARY,
        "importance": "taylor",
        "calibration": list(blocks.shape),
    }


def main() -> None:
    import argparse
    import json
    import time

    from selfprune.eval.perplexity import perplexity
    from selfprune.models import load_model
    from selfprune.models.loading import default_model_dir
    from selfprune.pruning.pipeline import calibration_blocks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ppl", default="/work/shared/data/wikitext-2-raw/wiki.test.raw")
    parser.add_argument("--windows", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(str(default_model_dir()))
    blocks = calibration_blocks(tok, "lambada", args.samples, args.seqlen, 0)
    dense_ppl = perplexity(model, tok, args.ppl, seqlen=512, max_windows=args.windows).ppl
    start = time.perf_counter()
    result = prune_llm_pruner(model, blocks, args.ratio)
    seconds = time.perf_counter() - start
    ppl = perplexity(model, tok, args.ppl, seqlen=512, max_windows=args.windows).ppl
    summary = {k: result[k] for k in ("achieved_ratio", "attn_params", "mlp_params", "library", "importance")}
    summary.update(heads=sorted(set(result["heads"])), kv_heads=sorted(set(result["kv_heads"])),
                   mlp=sorted(set(result["mlp"])), seconds=round(seconds, 1), dense_ppl=dense_ppl, ppl=ppl)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
