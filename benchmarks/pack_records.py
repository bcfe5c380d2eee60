"""Pack each evaluation run's per-item records (``RUN/BENCH/METHOD.jsonl`` beside ``RUN/summary.json``) into
``RUN/records.zip`` and remove the loose files; they read back the same (``c2c.core.runlog.read_jsonl``).

    python benchmarks/pack_records.py [ROOT ...]     # default: results
"""
from __future__ import annotations

import sys
from pathlib import Path

from c2c.core.runlog import pack_records


def main(argv: list[str]) -> None:
    for root in argv or ["results"]:
        for archive in pack_records(Path(root)):
            print(archive)


if __name__ == "__main__":
    main(sys.argv[1:])
