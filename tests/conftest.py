import os
import sys
from pathlib import Path

# No test may wait on the network: should `datasets` / `huggingface_hub` be installed, they fail fast offline
# (set before anything imports them). Tests of the hub use a fake `datasets` module (tests/test_hub.py).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny  # noqa: E402

from c2c.model.config import FuserConfig  # noqa: E402
from c2c.model.pair import C2CModel  # noqa: E402

SMALL_FUSER = FuserConfig(hidden_size=16, intermediate_size=16, zero_init=False, dropout=0.0)


def make_pair(receiver: str = "llama", sharers=("gemma",), fuser: FuserConfig = SMALL_FUSER, open_gates: bool = True,
              seed: int = 0, **kwargs) -> C2CModel:
    """A fresh pair of tiny models; ``open_gates`` sets every gate logit to +1 so fusion changes the output."""
    torch.manual_seed(seed)
    pair = C2CModel.create(tiny(receiver), [tiny(s) for s in sharers], fuser, **kwargs)
    with torch.no_grad():
        for fuser_module in pair.layer_fusers():
            fuser_module.gate_logits.fill_(1.0 if open_gates else -1.0)
    return pair.eval()


def count_sharer_runs(pair: C2CModel) -> list[int]:
    """The sharer indices of every sharer pass ``pair`` runs from now on (``pair.sharer_kv`` calls)."""
    calls: list[int] = []
    real = pair.sharer_kv
    pair.sharer_kv = lambda *args: calls.append(args[0]) or real(*args)
    return calls


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Model conversions of a test go to its own folder, not to the user's ~/.cache/c2c."""
    monkeypatch.setenv("C2C_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def pair_factory():
    return make_pair


def real_data(*parts: str) -> Path:
    """A path under the real data dir ($C2C_DATA_DIR, e.g. ../shared/data, which `make test` sets when it exists);
    skips the calling test, with the reason, when the variable is unset or the path is absent there."""
    root = os.environ.get("C2C_DATA_DIR")
    if not root:
        pytest.skip("needs the real data: set C2C_DATA_DIR to a folder in the shared data layout "
                    "(make test does when ../shared/data exists)")
    path = Path(root).joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} not present (C2C_DATA_DIR={root})")
    return path

