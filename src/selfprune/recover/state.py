"""Resumable training state: trainable weights, optimizer, schedule, RNG and data position.

The data position is the step count itself (the batch of a step follows from the seed, see
``data.RecoveryData``). The state is one ``torch.save`` file written through a temporary file and
a rename, so a kill during the write leaves the previous state intact. ``identity`` holds what
must match for a resume to continue the same run (method, budget, data hash, starting weights...).
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import torch

from selfprune.errors import SelfpruneError

STATE_FILE = "state.pt"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap hash of every parameter's name, shape and sum: tells two starting models apart."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}{float(p.detach().double().sum()):.10e}".encode())
    return h.hexdigest()[:16]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (all of them for full updates, the adapters for LoRA)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in saved if n not in params]
    if missing or len(saved) != sum(p.requires_grad for p in params.values()):
        raise SelfpruneError("the saved recovery state does not fit this model; delete the state directory to start over")
    with torch.no_grad():
        for n, value in saved.items():
            params[n].copy_(value.to(params[n].device))


def save_state(state_dir: str | os.PathLike, state: dict) -> Path:
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    target = state_dir / STATE_FILE
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{STATE_FILE}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_state(state_dir: str | os.PathLike) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a damaged file means the same thing whatever the cause
        raise SelfpruneError(f"the recovery state '{path}' cannot be read ({type(exc).__name__}); delete it to start over") from None


def check_identity(saved: dict, current: dict, state_dir) -> None:
    """Refuse to resume a run whose settings, data or starting model differ from this one."""
    diffs = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if diffs:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diffs[:3])
        raise SelfpruneError(
            f"the saved state in '{state_dir}' belongs to a different run ({shown}); rerun with the same settings, "
            "or delete that directory to start over"
        )
