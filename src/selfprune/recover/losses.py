"""The recovery objectives: logit distillation from the dense teacher, or plain next-token loss.

Both are means per token, computed in fp32 whatever the forward pass ran in (a bf16 softmax
over a 50k-150k vocabulary loses the small probabilities that KL is made of).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per token at ``temperature``, scaled by T^2 (Hinton et al.), over every position.

    Every position has a teacher distribution, so the last one counts too (unlike next-token loss).
    """
    vocab = student_logits.shape[-1]
    s = (student_logits.float() / temperature).log_softmax(-1).reshape(-1, vocab)
    t = (teacher_logits.float() / temperature).log_softmax(-1).reshape(-1, vocab)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def lm_loss(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood: position t predicts token t + 1."""
    logits = student_logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))
