"""What a pair looks like to C2C: model shapes, the layer map, the fuser's size and token-alignment quality."""

from __future__ import annotations

from dataclasses import asdict

from ..core.models import sliding_window
from ..inputs.align import as_messages, content_tokens
from .pair import C2CModel

SAMPLE_TEXT = ("Photosynthesis turns light, water and CO2 into glucose; chlorophyll absorbs red and blue light. "
               "In 1905, Einstein's paper on the photo-electric effect (E = hf) explained why. "
               "光合作用把光能转化为化学能。 Emoji: 🌱☀️ — naïve café façade.")


def inspect_pair(pair: C2CModel, sample_text: str = SAMPLE_TEXT) -> dict:
    """A JSON-able report; ``pair`` may be untrained (sizes do not depend on the weights)."""
    receiver = pair.receiver
    view = pair.render_prompt(sample_text)
    translator = pair.config.translator
    report = {"receiver": _model_report(receiver), "sharers": [],
              "fuser": asdict(pair.config.fuser) if pair.config.fuser else None,
              "fuser_parameters": sum(p.numel() for p in pair.fusers.parameters()),
              "translator": translator.to_dict() if translator else None,
              "translator_parameters": sum(p.numel() for p in pair.translators.parameters()) if translator else 0,
              "chat_template_used": pair.config.chat_template, "sample_text": sample_text}
    for sharer, sharer_config, aligner in zip(pair.sharers, pair.config.sharers, pair.aligners):
        alignment = aligner.align(as_messages(sample_text), view, pair.config.chat_template)
        message_tokens = sum(1 for index, *_ in content_tokens(view) if index < len(view.ids) - 1)
        report["sharers"].append({
            **_model_report(sharer),
            "layer_map": sharer_config.layer_map,
            "token_alignment": sharer_config.token_alignment,
            "translator_sources": pair.translators[len(report["sharers"])].sources if translator else None,
            "alignment_quality": {"receiver_tokens": len(view.ids), "message_tokens": message_tokens,
                                  "exact": alignment.exact, "approximate": alignment.approximate,
                                  "sharer_tokens": len(alignment.sharer_ids)},
        })
    return report


def _model_report(model) -> dict:
    shape = model.shape
    return {"name": model.name, "type": shape.model_type, "layers": shape.num_layers, "kv_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim, "vocab": shape.vocab_size,
            "chat_template": bool(model.tokenizer.chat_template),
            "parameters": sum(p.numel() for p in model.model.parameters()),
            "dtype": str(next(model.model.parameters()).dtype).replace("torch.", ""),
            "sliding_window": sliding_window(model)}


def format_report(report: dict) -> str:
    """Human-readable text of ``inspect_pair``'s report."""
    lines = []
    for role, model in [("receiver", report["receiver"])] + [(f"sharer {i}", s) for i, s in
                                                              enumerate(report["sharers"])]:
        lines.append(f"{role}: {model['name']} ({model['type']}, {model['parameters'] / 1e6:.0f}M parameters)")
        lines.append(f"  layers {model['layers']}, KV heads {model['kv_heads']} x head dim {model['head_dim']}, "
                     f"vocab {model['vocab']}, chat template: {'yes' if model['chat_template'] else 'no'}"
                     + (f", sliding window {model['sliding_window']}" if model["sliding_window"] else ""))
    for index, sharer in enumerate(report["sharers"]):
        pairs = ", ".join(f"{r}<-{s}" for r, s in enumerate(sharer["layer_map"]))
        lines.append(f"layer map (receiver<-sharer {index}): {pairs}")
        quality = sharer["alignment_quality"]
        fused = quality["exact"] + quality["approximate"]
        lines.append(f"token alignment ({sharer['token_alignment']}) on the sample text: {fused} of "
                     f"{quality['message_tokens']} message tokens fused, {quality['exact']} exact (one sharer token "
                     f"with the same span), {quality['approximate']} approximate; receiver {quality['receiver_tokens']}"
                     f" tokens, sharer {quality['sharer_tokens']} tokens")
    fuser = report["fuser"]
    if fuser:
        lines.append(f"fuser: hidden {fuser['hidden_size']}, intermediate {fuser['intermediate_size']}, "
                     f"{fuser['num_layers']} layers per branch -> {report['fuser_parameters']:,} parameters "
                     f"({report['fuser_parameters'] * 4 / 2**20:.1f} MiB in float32)")
    else:
        lines.append("fuser: none (no fused-prompt channel)")
    translator = report["translator"]
    if translator:
        sources = report["sharers"][0]["translator_sources"]
        limit = translator["max_context_tokens"]
        lines.append(f"context translator: receiver layer l reads sharer layers {sources[0]} ... {sources[-1]} "
                     f"(window {translator['window']}) -> {report['translator_parameters']:,} parameters, stored as "
                     f"{translator['storage_dtype']}; contexts up to "
                     f"{f'{limit} sharer tokens' if limit else 'what both models take'}")
    return "\n".join(lines)
