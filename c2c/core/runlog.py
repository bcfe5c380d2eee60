"""What runs leave on disk: files written atomically, per-item JSONL records (loose, or packed into their run's
``records.zip``), a training run's metrics log."""

from __future__ import annotations

import json
import lzma
import os
import tempfile
import time
import zipfile
from pathlib import Path

RECORDS_ARCHIVE = "records.zip"  # an evaluation run's per-item records, packed (``pack_records``)
RUN_MARK = "summary.json"  # what makes a folder an evaluation run


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
    """Records of a per-item file; a line cut off by an interrupted run is skipped (the item is redone). A run's
    file packed into its ``records.zip`` (``pack_records``) is read from there when the loose file is absent."""
    text = path.read_text() if path.exists() else archived_text(path)
    if text is None:
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def archived_text(path: Path) -> str | None:
    """The text of a per-item file (``RUN/BENCH/METHOD.jsonl``) as packed into ``RUN/records.zip``; None if it is
    not there."""
    path = Path(path)
    archive = path.parent.parent / RECORDS_ARCHIVE
    if not archive.is_file():
        return None
    name = f"{path.parent.name}/{path.name}"
    found = _archived(archive, [name])
    return found[name].decode() if name in found else None


def _archived(archive: Path, names: list[str] | None = None) -> dict[str, bytes]:
    """The files packed in ``archive`` (those of ``names`` it holds, or all); a damaged archive is refused with
    what to do."""
    try:
        with zipfile.ZipFile(archive) as packed:
            held = packed.namelist()
            return {name: packed.read(name) for name in (held if names is None else set(names) & set(held))}
    except (zipfile.BadZipFile, lzma.LZMAError, EOFError, OSError) as error:
        raise ValueError(f"{archive} is damaged ({error}): restore it (git checkout -- {archive}) or remove it, "
                         "and the records it held are made again by the next run") from error


def pack_records(root: Path) -> list[Path]:
    """Pack each evaluation run's loose per-item files under ``root`` into the run's ``records.zip`` and remove
    them: a run is a folder holding ``summary.json`` (what ``c2c eval --out`` writes), its records the files
    ``BENCH/METHOD.jsonl`` in it; other files are left alone. A loose file replaces its packed copy; the archive
    is byte-reproducible (sorted names, fixed dates, LZMA) and written atomically before any loose file is
    removed. Returns the archives written."""
    written = []
    for run in sorted({p.parent for p in Path(root).rglob(RUN_MARK)}):
        loose = sorted(run.glob("*/*.jsonl"))
        if not loose:
            continue
        archive = run / RECORDS_ARCHIVE
        entries = _archived(archive) if archive.is_file() else {}
        entries.update({p.relative_to(run).as_posix(): p.read_bytes() for p in loose})

        def write(temporary: str) -> None:
            with zipfile.ZipFile(temporary, "w", zipfile.ZIP_LZMA) as packed:
                for name in sorted(entries):
                    packed.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), entries[name],
                                    compress_type=zipfile.ZIP_LZMA)

        atomic_write(archive, write)
        for p in loose:
            p.unlink()
        written.append(archive)
    return written


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
