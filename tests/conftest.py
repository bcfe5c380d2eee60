import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny  # noqa: E402

from c2c.fuser import FuserConfig  # noqa: E402
from c2c.pair import C2CModel  # noqa: E402

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


@pytest.fixture
def pair_factory():
    return make_pair
