"""A results folder: where each record and video goes, and how values are stored."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import atomic_path


def readable_json(obj) -> str:
    """JSON indented for people, with lists of numbers kept on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([-+\d.eE,\s]+?)\s+\]",
                  lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


SETTINGS = "settings.json"  # what a results folder was made with


def record_path(out: Path, method: str, pair_id: str) -> Path:
    return out / "records" / method / f"{pair_id}.json"


def load_record(out: Path, method: str, pair_id: str) -> dict:
    """The scores of (method, pair) in the results folder ``out`` (OSError or ValueError when it
    is missing or damaged)."""
    return json.loads(record_path(out, method, pair_id).read_text())


def video_path(out: Path, method: str, pair_id: str) -> Path:
    return out / "videos" / method / f"{pair_id}.npz"


def rounded(obj, digits: int = 10):
    """Metric values rounded to ``digits`` significant digits: what is stored does not depend on
    the last bits of floating-point sums (which vary with threads and memory layout)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    return obj


def save_npz(path: Path, video: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, video=video)


def load_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["video"]


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(readable_json(obj))


@dataclass
class Settings:
    """What a run was asked; a results folder holds the results of one set of settings."""

    set_root: str
    set_digest: str
    model: str | None
    backward: str | None
    seed: int
    sampling: dict

    def as_dict(self) -> dict:
        return dict(set=self.set_root, set_digest=self.set_digest, model=self.model,
                    backward=self.backward, seed=self.seed, sampling=self.sampling)
