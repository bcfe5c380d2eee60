"""Fusers on the Hugging Face Hub, as peft shares adapters: ``C2CModel.from_pretrained("owner/name")`` and
``C2CModel.push_to_hub("owner/name")`` with a generated model card.

Only the fuser folder travels (``c2c_config.json``, ``fuser.safetensors``, the training recipe and the evaluation
summary when there are any, and the card); the frozen models are named in the config and loaded by their own
specs. ``huggingface_hub`` honours its cache, ``revision`` and offline mode (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..core.stats import paired_text
from .config import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

FILES = (CONFIG_NAME, WEIGHTS_NAME, "train_config.json", "fit_report.json", "eval_summary.json",
         "README.md")


def is_repo_id(spec: str) -> bool:
    """``owner/name``: one slash, no path-like start (a local folder of that name is still preferred)."""
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and all(spec.split("/"))


def resolve(spec: str | Path, revision: str | None = None) -> Path:
    """A fuser folder: ``spec`` itself when it exists locally, else its Hub snapshot (fetched, or from the cache)."""
    path = Path(spec).expanduser()
    if path.exists() or not is_repo_id(str(spec)):
        if revision is not None:
            raise CheckpointError(f"revision={revision!r} applies to a Hub repository, but {spec} is a local folder")
        return path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as error:  # pragma: no cover (a dependency of transformers)
        raise CheckpointError(f"{spec} is not a local folder, and huggingface_hub is not installed to fetch it "
                              "from the Hub (pip install huggingface_hub)") from error
    try:
        return Path(snapshot_download(str(spec), revision=revision, allow_patterns=list(FILES)))
    except LocalEntryNotFoundError as error:
        raise CheckpointError(f"fuser {spec!r} is neither a local folder nor in the Hub cache, and the Hub cannot "
                              f"be reached (offline: HF_HUB_OFFLINE is set, or no network): {error}. Download it "
                              "once online, or give a local fuser folder") from None
    except (RepositoryNotFoundError, HfHubHTTPError, ValueError) as error:
        raise CheckpointError(f"fuser {spec!r} could not be fetched from the Hub (revision {revision or 'main'}): "
                              f"{error}") from None


def model_card(pair, train_config: dict | None = None, summary: dict | None = None) -> str:
    """A README.md as peft writes one: the pair, the alignment, the recipe and data, the gates per layer, and the
    evaluation table with its controls (from a ``c2c eval`` summary.json)."""
    config = pair.config
    lines = ["---", "library_name: c2c", "tags: [cache-to-cache, kv-cache, fuser]",
             f"base_model: {config.receiver}", "---", "",
             f"# C2C {'fuser' if config.fuser is not None else 'context translator'}: {config.receiver} <- "
             f"{', '.join(s.model for s in config.sharers)}", "",
             ("A Cache-to-Cache fuser (arXiv 2510.03215): the sharer's KV-cache is projected into the receiver's, "
              "layer by layer, and the receiver answers from the fused cache." if config.fuser is not None else
              "A context translator for Cache-to-Cache communication: a context only the sharer reads is translated, "
              "layer by layer, into receiver K/V placed where its text would stand, and the receiver answers from "
              "it.") + " Both models stay frozen; this repository holds only what was trained.", "",
             "```python", "from c2c import C2CModel",
             "pair = C2CModel.from_pretrained(\"OWNER/NAME\")  # loads the models named below by their specs",
             "print(pair.generate(\"Why is the sky blue?\")[0])" if config.fuser is not None else
             "print(pair.generate(\"Question: What is Zelda's pet?\\nAnswer:\", sharer_contexts=\"Zelda's pet is a "
             "turtle.\")[0])", "```", "", "## The pair", "",
             f"- receiver: `{config.receiver}` ({config.receiver_shape['num_layers']} layers); chat template "
             f"{'used' if config.chat_template else 'not used'}"]
    for sharer in config.sharers:
        lines.append(f"- sharer: `{sharer.model}` ({sharer.shape['num_layers']} layers), token alignment "
                     f"`{sharer.token_alignment}`, layer map (receiver <- sharer) {sharer.layer_map}")
    if config.fuser is not None:
        fuser = config.fuser
        lines += [f"- fuser: hidden {fuser.hidden_size}, intermediate {fuser.intermediate_size}, {fuser.num_layers} "
                  f"layers per branch, {sum(p.numel() for p in pair.fusers.parameters()):,} parameters; receiver "
                  f"input {fuser.receiver_input}, position-free keys {fuser.position_free}"]
    if config.translator is not None:
        lines.append(f"- context translator: window {config.translator.window}, residual rank "
                     f"{config.translator.residual_rank}, {sum(p.numel() for p in pair.translators.parameters()):,} "
                     f"parameters stored as {config.translator.storage_dtype}: a context only the sharer reads is "
                     "translated into receiver K/V where its text would stand (`sharer_contexts=`)")
    if config.fuser is not None:
        gates, is_open = pair.gate_logits(), pair.open_gates()  # (sharers, layers, 2)
        lines += ["", "## Gates (open when the logit is positive)", "", "| receiver layer | "
                  + " | ".join(f"sharer {j} K | sharer {j} V" for j in range(gates.shape[0])) + " |",
                  "|---|" + "---|" * (2 * gates.shape[0])]
        for layer in range(gates.shape[1]):
            cells = [f"{'open' if o else 'shut'} ({v:+.2f})" for j in range(gates.shape[0])
                     for v, o in zip(gates[j, layer].tolist(), is_open[j, layer].tolist())]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if train_config:
        data = train_config.get("data") or []
        objective = "self-distillation (KL, teacher: the receiver reading the text)" \
            if train_config.get("method") == "translator" else train_config.get("objective")
        lines += ["", "## Training", "", f"- method `{train_config.get('method')}`, objective "
                  f"`{objective}`, steps {train_config.get('steps')}, epochs "
                  f"{train_config.get('epochs')}, batch {train_config.get('batch_size')}, lr {train_config.get('lr')}, "
                  f"seed {train_config.get('seed')}", "- data: " + ("; ".join(json.dumps(d) for d in data) or "none"),
                  *([f"- started from `{train_config['init_from']}`"] if train_config.get("init_from") else []),
                  *(["- self-distillation data: " + "; ".join(json.dumps(d) for d in train_config["distill_data"])]
                    if train_config.get("distill_data") else []),
                  "- the whole recipe is `train_config.json` in this repository"]
    if summary:
        free = summary.get("scoring") == "free"
        lines += ["", "## Evaluation", "", f"`c2c eval`, scoring `{summary.get('scoring')}`, split "
                  f"`{summary.get('split')}`. {'F1' if free else 'Accuracy'} % (n). The `-shuffled` methods are the "
                  "control where the sharer reads another item: the gain over it is what the sharer's cache carried.",
                  ""]
        benchmarks = summary.get("benchmarks", {})
        methods = list(dict.fromkeys(m for b in benchmarks.values() for m in b["methods"]))
        lines += ["| method | " + " | ".join(benchmarks) + " |", "|---|" + "---|" * len(benchmarks)]
        for method in methods:
            cells = [f"{100 * b['methods'][method]['f1' if free else 'accuracy']:.1f} ({b['methods'][method]['n']})"
                     if method in b["methods"] else "-" for b in benchmarks.values()]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        for channel in ("c2c", "c2c-translated"):
            gains = [(name, b.get("paired", {}).get(f"{channel} - {channel}-shuffled")) for name, b in benchmarks.items()]
            gains = [(name, g) for name, g in gains if g and g.get("difference") is not None]
            if gains:
                lines += ["", f"Communication gain, {channel} - {channel}-shuffled, paired on the same items (points, "
                          "95% CI): " + "; ".join(f"{name} {paired_text(g)}" for name, g in gains) + "."]
    return "\n".join(lines) + "\n"


def push(pair, repo_id: str, *, source: Path | None = None, summary: str | Path | None = None,
         private: bool = False, token: str | None = None, commit_message: str = "Upload C2C fuser",
         revision: str | None = None) -> str:
    """Upload the fuser folder with its model card; returns the commit URL. ``source``: the folder the fuser was
    loaded from, whose train_config.json / fit_report.json travel with it; ``summary``: a c2c eval summary.json."""
    from huggingface_hub import HfApi
    train_config = _read_json(source / "train_config.json") if source else None
    evaluation = _read_json(Path(summary)) if summary else None
    with tempfile.TemporaryDirectory() as staging:
        folder = pair.save_pretrained(Path(staging))
        for name in ("train_config.json", "fit_report.json"):
            if source is not None and (source / name).is_file():
                (folder / name).write_text((source / name).read_text())
        if evaluation is not None:
            (folder / "eval_summary.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        (folder / "README.md").write_text(model_card(pair, train_config, evaluation))
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                     revision=revision))


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
