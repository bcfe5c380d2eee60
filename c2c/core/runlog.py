"""What runs leave on disk: files written atomically, per-item JSONL records, a training run's metrics log."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


def atomic_write(path: Path, write) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~umask)  # as open() would create it; mkstemp makes files private (0600)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a per-item file; a line cut off by an interrupted run is skipped (the item is redone)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Add records to a per-item file as they are made, so an interrupted run keeps them (``read_jsonl``)."""
    with path.open("a") as handle:
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class MetricsLog:
    """A training run's ``metrics.jsonl``: one timestamped record per line, written by the main process only."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"time": time.time(), **record}) + "\n")


def read_metrics(run: str | Path) -> list[dict]:
    """A run's ``metrics.jsonl`` as if it had run uninterrupted: records of the steps a resume redid (logged
    after the checkpoint it resumed from, before the interruption) are dropped for the redone ones."""
    records: list[dict] = []
    for record in read_jsonl(Path(run) / "metrics.jsonl"):
        if record.get("event") == "resume":
            records = [r for r in records if r.get("step", 0) <= record["step"]]
        records.append(record)
    return records


def training_minutes(run: str | Path) -> float:
    """Wall-clock minutes a run spent training, summed over its sessions: a resumed run's pause is not counted."""
    spans, start, last = [], None, None
    for record in read_jsonl(Path(run) / "metrics.jsonl"):
        if record.get("event") == "resume" and start is not None:
            spans.append(last - start)
            start = None
        start = record["time"] if start is None else start
        last = record["time"]
    if start is not None:
        spans.append(last - start)
    return round(sum(spans) / 60, 1)
