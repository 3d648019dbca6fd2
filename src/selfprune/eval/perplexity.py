"""Perplexity of a causal LM on a text, with the protocol recorded next to the number.

Protocol: the whole text is tokenized once (with the tokenizer's special tokens, as the common
pruning scripts do) and cut into windows of ``seqlen`` tokens that start every ``stride`` tokens.
With ``stride == seqlen`` (the default, as in SparseGPT/Wanda/FLAP) the windows do not overlap and
every prediction inside a window is scored. With a smaller stride each later window scores only
its last ``stride`` tokens, so every token is scored once with at least ``seqlen - stride`` tokens
of context. Tokens after the last full window are not scored. ppl = exp(mean NLL over all scored
tokens). Windows run in batches; the NLL comes from one cross-entropy over the batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from selfprune.data.eval_text import EvalText, load_eval_text
from selfprune.errors import SelfpruneError

# The two sequence lengths pruning papers report: 128 (LLM-Pruner, FLAP, Self-Pruner) and
# 2048 (SparseGPT, Wanda, SliceGPT). The default is the longer, more common one.
DEFAULT_SEQLEN = 2048
PAPER_SEQLENS = (128, 2048)
# Tokens per forward pass; with a 49k vocabulary the fp32 logits of 2048 tokens take 400 MB.
DEFAULT_TOKENS_PER_BATCH = 2048


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens_scored: int
    windows: int
    protocol: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def context_length(model) -> int | None:
    """The longest sequence the model was built for, or None when its config does not say."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text as one 1-D tensor (no truncation, no length warning)."""
    ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def make_windows(n_tokens: int, seqlen: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start offsets of the windows, and for each the first position whose token is scored."""
    starts = torch.arange(0, n_tokens - seqlen + 1, stride)
    first_scored = torch.full_like(starts, seqlen - stride)
    first_scored[0] = 1  # the first window scores everything it can predict
    return starts, first_scored


@torch.inference_mode()
def perplexity(
    model,
    tokenizer,
    text_or_source: str | Path | EvalText | torch.Tensor,
    seqlen: int = DEFAULT_SEQLEN,
    max_windows: int | None = None,
    batch_size: int | None = None,
    stride: int | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on a text.

    ``text_or_source``: ``"wikitext2"``, a text file path, an :class:`EvalText`, or a 1-D tensor
    of token ids. ``max_windows`` keeps the first N windows (quick runs). ``batch_size`` defaults
    to as many windows as fit in 2048 tokens.
    """
    if isinstance(text_or_source, torch.Tensor):
        ids, described = text_or_source.reshape(-1).long(), {"source": "token ids", "join": "given as tokens"}
    else:
        text = text_or_source if isinstance(text_or_source, EvalText) else load_eval_text(text_or_source)
        ids, described = tokenize(tokenizer, text.text), text.describe()

    if seqlen < 2:
        raise SelfpruneError(f"seqlen {seqlen} is too short; use at least 2 (papers use 128 or 2048)")
    limit = context_length(model)
    if limit is not None and seqlen > limit:
        raise SelfpruneError(
            f"seqlen {seqlen} is longer than the model's context of {limit} tokens; pass --seqlen {limit} or less"
        )
    stride = seqlen if stride is None else stride
    if not 1 <= stride <= seqlen:
        raise SelfpruneError(f"stride {stride} must be between 1 and seqlen ({seqlen})")
    if len(ids) < seqlen:
        raise SelfpruneError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}; use a smaller --seqlen")
    if max_windows is not None and max_windows < 1:
        raise SelfpruneError(f"max_windows must be at least 1, got {max_windows}")
    batch_size = batch_size or max(1, DEFAULT_TOKENS_PER_BATCH // seqlen)

    starts, first_scored = make_windows(len(ids), seqlen, stride)
    if max_windows is not None:
        starts, first_scored = starts[:max_windows], first_scored[:max_windows]

    device = next(model.parameters()).device
    offsets = torch.arange(seqlen)
    total_nll = torch.zeros((), dtype=torch.float64)
    total_tokens = 0
    for b in range(0, len(starts), batch_size):
        batch = ids[starts[b : b + batch_size, None] + offsets].to(device)  # (B, seqlen) gather, no loop
        # Label at position t is the token at t; it is scored from the logits at t - 1.
        labels = batch.clone()
        labels[offsets[None, :].to(device) < first_scored[b : b + batch_size, None].to(device)] = -100
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        total_nll += nll.double().cpu()
        total_tokens += int((labels[:, 1:] != -100).sum())

    mean_nll = float(total_nll / total_tokens)
    protocol = {
        **described,
        "tokens_in_text": int(len(ids)),
        "seqlen": seqlen,
        "stride": stride,
        "windows": int(len(starts)),
        "max_windows": max_windows,
        "tokens_scored": total_tokens,
        "add_special_tokens": True,
        "batch_size": batch_size,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(device),
        "ppl": "exp(mean NLL over scored tokens)",
    }
    return PerplexityResult(
        ppl=math.exp(mean_nll), nll=mean_nll, tokens_scored=total_tokens, windows=int(len(starts)), protocol=protocol
    )
