"""c2c: Cache-to-Cache communication between LLMs.

    from c2c import C2CModel
    pair = C2CModel.from_pretrained("fusers/default_pair_chat")   # or C2CModel.create(receiver, [sharer])
    pair.generate("Why is the sky blue?")

Names are imported lazily, so ``import c2c.data`` stays light (no torch).
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "C2CModel": "model.pair", "C2CConfig": "model.config", "CheckpointError": "model.config",
    "FuserConfig": "model.config",
    "load_model": "core.models", "LoadedModel": "core.models", "ModelLoadError": "core.models",
    "TrainConfig": "training.recipe", "train": "training.train",
    "EvalConfig": "evaluation.evaluate", "EvalSetup": "evaluation.evaluate", "run_eval": "evaluation.evaluate",
    "inspect_pair": "model.inspection",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'c2c' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
