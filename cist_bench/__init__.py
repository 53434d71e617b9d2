"""cist_bench: a Ray-based benchmark suite for knowledge distillation, centred on CIST."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """``<version>+<hash of the package's source files>``: two processes run the same
    cist_bench exactly when their fingerprints are equal (a cluster's start-up check compares
    every node's with the driver's; the version alone does not change with each commit)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"
