"""Content fingerprints: what a stage's output was made from, so nothing is reused silently.

A small file is hashed whole; a large one (a 58 GB BSON) by its size and 256 blocks of 64 KB spread
over it (a file rewritten in place, mtime kept, differs in every product's bytes, so in the blocks).
A stage records `{name: fingerprint}` of what it read (`made_from`) beside its output; before
reusing the output it compares them again and reruns, or stops naming what changed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

WHOLE_FILE_BYTES = 256 << 20
SAMPLE_BLOCKS, BLOCK_BYTES = 256, 64 << 10


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of the content (whole, or size + sampled blocks above 256 MB); "missing" when absent."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return "sha256:" + h.hexdigest()
        for i in range(SAMPLE_BLOCKS):
            f.seek((size - BLOCK_BYTES) * i // (SAMPLE_BLOCKS - 1))
            h.update(f.read(BLOCK_BYTES))
    return f"sampled-sha256:{h.hexdigest()}"


def made_from(files: dict[str, str | os.PathLike]) -> dict[str, dict]:
    """{name: {path, fingerprint}} of the files an output is made from."""
    return {name: {"path": str(p), "fingerprint": fingerprint(p)} for name, p in files.items()}


def changes(record: dict[str, dict], now: dict[str, dict]) -> list[str]:
    """What differs between a recorded made_from and the one of the files as they are now."""
    out = []
    for name, was in record.items():
        current = now.get(name, {}).get("fingerprint")
        if current != was.get("fingerprint"):
            out.append(f"{name} ({was['path']}) changed" if current != "missing" else f"{name} ({was['path']}) is gone")
    return out + [f"{name} ({v['path']}) is new" for name, v in now.items() if name not in record]
