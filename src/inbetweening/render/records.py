"""What a render folder remembers: one record per shot (``.render/``, written by the process that
renders the shot) and the summary of them all (``render.json``), rewritten under a lock so that
processes writing at once lose nothing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from urllib.parse import quote

from ..evaluation.results import write_json
from .manifest import RECORDS, SUMMARY, Shot

# A record's status: "rendering" (claimed; a process that dies leaves it so), "done", "failed".
DONE, FAILED, RENDERING = "done", "failed", "rendering"


def record_path(out: Path, output: str) -> Path:
    return out / RECORDS / f"{quote(output, safe='')}.json"


def load_record(out: Path, output: str) -> dict | None:
    """The record of the shot writing ``output``; None when there is none or it is damaged."""
    try:
        record = json.loads(record_path(out, output).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("output") == output else None


def write_record(out: Path, shot: Shot, made_with: dict, status: str, **more) -> dict:
    """Write the record of ``shot``: its line, output, seed and settings (``made_with``: the
    model's part), ``status`` and ``more`` (seconds, predictions, error ...)."""
    record = {"line": shot.line, "output": shot.output, "status": status, "seed": shot.seed,
              "settings": {**shot.settings(), **made_with}, **more}
    write_json(record_path(out, shot.output), record)
    return record


def same_settings(record: dict | None, shot: Shot, made_with: dict) -> bool:
    return record is not None and record.get("seed") == shot.seed and \
        record.get("settings") == {**shot.settings(), **made_with}


@contextlib.contextmanager
def locked(out: Path):
    """Hold the render folder's lock (one process at a time in the block)."""
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    fd = os.open(out / RECORDS / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def write_summary(out: Path, manifest: Path, shots: list[Shot], made_with: dict) -> dict:
    """``render.json`` from the records now on disk, in the manifest's order: per shot its line,
    output (under ``out``), status (``done``, ``failed``, ``rendering``, or ``missing`` when no
    record of these settings is there), seed, settings, seconds, predictions and error; the
    counts of each status."""
    with locked(out):
        entries = []
        for shot in shots:
            record = load_record(out, shot.output)
            if not same_settings(record, shot, made_with) or (
                    record["status"] == DONE and not (out / shot.output).exists()):
                record = {"line": shot.line, "output": shot.output, "status": "missing",
                          "seed": shot.seed, "settings": {**shot.settings(), **made_with}}
            entries.append({**record, "line": shot.line})
        counts = {}
        for e in entries:
            counts[e["status"]] = counts.get(e["status"], 0) + 1
        summary = {"manifest": str(manifest.resolve()), "shots": len(shots), "counts": counts,
                   "outputs": entries}
        write_json(out / SUMMARY, summary)
    return summary
