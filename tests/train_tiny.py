"""Run a training recipe on the tiny llama <- gemma pair (used by tests in subprocesses, e.g. under torchrun).

Usage: python tests/train_tiny.py CONFIG_JSON [--resume]
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny  # noqa: E402

from c2c.training.train import TrainConfig, train  # noqa: E402

if __name__ == "__main__":
    config = TrainConfig.from_dict(json.loads(Path(sys.argv[1]).read_text()))
    train(config, resume="--resume" in sys.argv, receiver=tiny("llama"), sharers=[tiny("gemma")])
