"""The modeling code copied into every pruned checkpoint, and how to recognise those copies.

selfprune never runs a checkpoint's copy: it loads pruned checkpoints with the installed module.
The digests tell the user whether the copy (the code stock transformers runs with
``trust_remote_code=True``) is one that selfprune shipped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODELING_FILE = Path(__file__).with_name("modeling_selfprune.py")

# sha256 of every version of modeling_selfprune.py shipped so far, the current one included (a
# test checks): checkpoints carry a copy of the version that wrote them.
SHIPPED_SHA256 = (
    "9dbec93a9b9469c32ba2e2c0325fc10298a543b5738e9fa64b85b75238bd3e50",  # one class per family (Llama layout)
    "0fff1f2235f0e5c580da40645679de5d2ed0abaadff48b4824b88daedb2b20f3",  # any family's class, from the recorded anatomy
)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` is byte for byte the modeling file of this selfprune version or an earlier one."""
    return sha256(path) in SHIPPED_SHA256
