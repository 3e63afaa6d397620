"""What a grid keeps on disk so that a killed run resumes and an extended grid computes only what
is new: adversarial sets (uint8 tensors, one file per set) and scored rows (one JSON line per cell),
both addressed by ``cache_key`` over everything that determines them."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from nrp_lightning.images import atomic_write

log = logging.getLogger(__name__)


def cache_key(*parts: Any) -> str:
    """16 hex of sha256 over a JSON rendering of ``parts`` (reprs of attacks, names, fingerprints)."""
    return hashlib.sha256(json.dumps(parts, default=repr, sort_keys=True).encode()).hexdigest()[:16]


class AdversarialCache:
    """uint8 ``(N,3,S,S)`` adversarial sets in ``root/<key>.pt``, written atomically, loaded with
    ``weights_only=True``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # sets crafted (not loaded) in this process

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file from an older torch or a full disk: recompute it
            log.warning("ignoring unreadable cache file %s (%s)", path, exc)
            return None

    def put(self, key: str, value: torch.Tensor) -> None:
        with atomic_write(self.path(key)) as f:
            torch.save(value, f)
        self.computed += 1


class ResultStore:
    """Rows (dicts) keyed by ``row["key"]``, appended to a JSON-lines file and flushed one by one."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = row
                except (json.JSONDecodeError, KeyError):
                    log.warning("skipping a torn line in %s (killed mid-write)", self.path)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> None:
        self.rows[row["key"]] = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
