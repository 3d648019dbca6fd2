"""LoRA adapters on the pruned linear layers (peft), merged back before the model is saved.

The adapters go on every attention and MLP projection that pruning left (a fully removed block
has none); embeddings, norms and biases stay frozen. Merging folds ``B @ A * alpha / r`` into each
weight, so the saved checkpoint has the pruned shapes and loads like any other selfprune checkpoint.
"""

from __future__ import annotations

from torch import nn

from selfprune.errors import SelfpruneError


def _peft():
    try:
        import peft
    except ImportError:
        raise SelfpruneError("--method lora-kd needs the package 'peft': run `pip install 'selfprune[recover]'` "
                             "(or `pip install peft`)") from None
    return peft


def check_available() -> None:
    _peft()


def target_modules(model: nn.Module) -> list[str]:
    """Leaf names of the decoder layers' linear layers (q/k/v/o, gate/up/down in the Llama family)."""
    names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                    if isinstance(m, nn.Linear) and ".layers." in f".{name}"})
    if not names:
        raise SelfpruneError("the pruned model has no linear layers left in its decoder layers for LoRA; use --method kd")
    return names


def add_lora(model: nn.Module, r: int = 16, alpha: float = 32.0, dropout: float = 0.0) -> nn.Module:
    """Wrap ``model`` with trainable LoRA adapters; every original weight is frozen."""
    peft = _peft()
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules(model),
                             bias="none")
    return peft.get_peft_model(model, config)


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights and return the plain pruned model."""
    merged = peft_model.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)  # as loaded: merge leaves the base weights frozen
    return merged
