"""The ``c2c`` command: argument parsing over the public API, nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core.names import (DEFAULT_RECEIVER, DEFAULT_SHARER, FREE_MAX_NEW_TOKENS, LAYER_MAPS, METHODS, SCORINGS,
                    TOKEN_ALIGNMENTS)


def _model_arguments(parser: argparse.ArgumentParser, default_dtype: str | None = "float32") -> None:
    """--dtype and --device: where and in what precision the frozen models run (fusers keep float32 weights);
    --verbose shows transformers' per-model loading bars."""
    parser.add_argument("--verbose", action="store_true", help="show the models' loading progress bars")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=default_dtype,
                        help=f"the models' dtype (default: {default_dtype or 'the recipe’s, else float32'}); bfloat16 "
                             "on a GPU halves memory and time")
    parser.add_argument("--device", default=None if default_dtype is None else "auto",
                        help="auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N")


def _pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fuser", help="a trained fuser folder (c2c_config.json + fuser.safetensors)")
    parser.add_argument("--receiver", help=f"receiver spec when no --fuser is given (default {DEFAULT_RECEIVER})")
    parser.add_argument("--sharer", action="append", help=f"sharer spec(s) when no --fuser is given "
                                                          f"(default {DEFAULT_SHARER}); repeat for several")
    _model_arguments(parser)


def _load_pair(args):
    """The pair for generate, chat and serve (all write text)."""
    _fuser_purpose(args.fuser)
    from .model.pair import C2CModel
    if args.fuser:
        return C2CModel.from_pretrained(args.fuser, dtype=args.dtype, device=args.device)
    print("note: no --fuser given: an untrained fuser changes nothing, so this is the receiver alone",
          file=sys.stderr)
    return C2CModel.create(args.receiver or DEFAULT_RECEIVER, args.sharer or [DEFAULT_SHARER], dtype=args.dtype,
                           device=args.device)


def cmd_inspect(args) -> None:
    from .model.config import FuserConfig
    from .model.inspection import SAMPLE_TEXT, format_report, inspect_pair
    from .model.pair import C2CModel
    if args.fuser:  # a trained or converted fuser: its own pair, layer map and token alignment
        pair = C2CModel.from_pretrained(args.fuser, dtype=args.dtype, device=args.device)
    else:
        pair = C2CModel.create(args.receiver, args.sharer or [DEFAULT_SHARER],
                               FuserConfig(hidden_size=args.fuser_hidden, intermediate_size=args.fuser_hidden),
                               args.layer_map, args.token_alignment, chat_template=not args.no_chat_template,
                               dtype=args.dtype, device=args.device)
    report = inspect_pair(pair, args.text or SAMPLE_TEXT)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))


def _sharer_context(path: str | None):
    """``--sharer-context FILE``: its text, or the translated context it holds (a ``.safetensors`` file that
    ``c2c read-context`` wrote), checked before any model loads; one error line otherwise."""
    if path is None:
        return None
    from .inputs.context import read_context_file  # light: no torch, no models
    try:
        if Path(path).suffix == ".safetensors":
            from .inputs.translated_context import TranslatedContext
            return TranslatedContext.load(path)
        return read_context_file(path)
    except ValueError as error:
        raise SystemExit(f"error: --sharer-context: {error}") from None


def _sampling(args) -> dict:
    """--sample and its settings, checked before any model loads (defaults: temperature 0.7, top-p 0.9)."""
    given = [f"--{name.replace('_', '-')}" for name in ("temperature", "top_p", "top_k") if getattr(args, name) is not None]
    if given and not args.sample:
        raise SystemExit(f"error: {', '.join(given)} only apply with --sample (decoding is greedy without it); "
                         "add --sample or drop them")
    temperature = 0.7 if args.temperature is None else args.temperature
    top_p = 0.9 if args.top_p is None else args.top_p
    if temperature <= 0:
        raise SystemExit(f"error: --temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise SystemExit(f"error: --top-p must be in (0, 1], got {top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise SystemExit(f"error: --top-k must be >= 1, got {args.top_k}")
    return dict(do_sample=args.sample, temperature=temperature, top_p=top_p, top_k=args.top_k)


def _fuser_purpose(fuser: str | None) -> None:
    """A fuser trained only to rank choices writes no sensible text: say so before generating with it."""
    config = Path(fuser or "") / "train_config.json"
    if fuser and config.is_file():
        try:
            objective = json.loads(config.read_text()).get("objective")
        except (json.JSONDecodeError, AttributeError):
            return
        if objective == "choices":
            print(f"warning: {fuser} was trained with objective: choices, to rank the answers of multiple-choice "
                  "questions (c2c eval), not to write text; its free text may be garbled. For text, use a fuser "
                  "trained on instructions, e.g. fusers/default_pair_chat", file=sys.stderr)


def cmd_generate(args) -> None:
    context = _sharer_context(args.sharer_context)  # bad input fails before any model loads
    sampling = _sampling(args)
    if args.max_new_tokens < 1:
        raise SystemExit(f"error: --max-new-tokens must be >= 1, got {args.max_new_tokens}")
    prompts = args.prompt if args.prompt else [sys.stdin.read()]
    if not all(prompt.strip() for prompt in prompts):
        raise SystemExit("error: a prompt is empty; give the prompt as an argument or on standard input")
    import torch
    from transformers import TextStreamer
    if context is not None and args.no_fuse:
        print("note: --no-fuse: the receiver answers alone; the sharer context is not read", file=sys.stderr)
    pair = _load_pair(args)
    torch.manual_seed(args.seed)
    stream = len(prompts) == 1 and not args.no_stream
    streamer = TextStreamer(pair.receiver.tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    outputs = pair.generate(prompts, max_new_tokens=args.max_new_tokens, stop=args.stop, streamer=streamer,
                            fuse=not args.no_fuse, sharer_contexts=context, **sampling)
    if not stream:
        for output in outputs:
            print(output)


def cmd_read_context(args) -> None:
    import time
    context = _sharer_context(args.context)
    if not isinstance(context, str):
        raise SystemExit(f"error: --context {args.context} is already a translated context; give the text file")
    if not args.out.endswith(".safetensors"):
        raise SystemExit(f"error: --out {args.out}: a translated context is saved as .safetensors; e.g. --out "
                         f"{Path(args.out).with_suffix('.safetensors')}")
    pair = _load_pair(args)
    if pair.translators is None:
        raise SystemExit(f"error: {args.fuser or 'this pair'} has no context translator; give --fuser a translator "
                         "checkpoint (e.g. fusers/context_handoff)")
    started = time.perf_counter()
    try:
        read = pair.read_context(context, args.sharer_index)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    path = read.save(args.out)
    print(f"read {read.tokens} context tokens in {time.perf_counter() - started:.1f} s; saved to {path} "
          f"({read.nbytes / 2**20:.1f} MiB); use it with: c2c generate --fuser {args.fuser} --sharer-context {path} "
          '"QUESTION"')


def cmd_train(args) -> None:
    import yaml
    from .training.recipe import TrainConfig, load_yaml, merge
    from .training.train import train
    overrides = {}
    for assignment in args.set or []:
        key, equals, value = assignment.partition("=")
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError:
            parsed = None
            equals = ""
        if not key or not equals:
            raise SystemExit(f"error: --set {assignment!r}: expected KEY=VALUE with a YAML value, e.g. --set lr=3e-4, "
                             "--set fuser.dropout=0.0 or --set 'data=[a.jsonl]'")
        *mappings, name = key.split(".")  # fuser.dropout=0: one key of a mapping (merged over the recipe's)
        target = overrides
        for mapping in mappings:
            target[mapping] = target[mapping] if isinstance(target.get(mapping), dict) else {}
            target = target[mapping]
        target[name] = parsed
    for key in ("output", "method", "steps", "epochs", "batch_size", "grad_accum", "lr", "seed", "max_examples",
                "dtype", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.steps is not None:
        overrides.setdefault("epochs", None)
    if args.epochs is not None:
        overrides.setdefault("steps", None)
    if args.resume:
        run = Path(args.resume)
        if not (run / "train_config.json").is_file():
            raise SystemExit(f"error: {run} is not a training run folder (no train_config.json); "
                             "give the output folder of an earlier `c2c train`")
        config = TrainConfig.from_dict(merge(json.loads((run / "train_config.json").read_text()), overrides))
    elif args.recipe:
        config = TrainConfig.from_file(args.recipe, overrides)
    else:
        raise SystemExit("error: give a recipe (e.g. c2c train recipes/default_pair_choices.yaml) or --resume DIR "
                         "(an interrupted run's output folder)")
    try:
        output = train(config, resume=bool(args.resume), overwrite=args.overwrite)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading, fitting, held-out evaluation)
        from .training.train import TrainingInterrupted, resume_hint
        raise TrainingInterrupted(f"stopped (Ctrl-C); {resume_hint(Path(config.output))}") from None
    print(f"saved to {output}")


def _method_limits(values: list[str] | None) -> dict[str, int]:
    limits = {}
    for value in values or []:
        method, _, count = value.partition("=")
        if not method or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"error: --method-limit {value!r}: expected METHOD=N with N >= 1, e.g. t2t=50")
        limits[method] = int(count)
    return limits


def cmd_eval(args) -> None:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise SystemExit(f"error: --out {args.out} is a file; give a folder for the records and summary")
    limits = _method_limits(args.method_limit)
    from .evaluation.evaluate import EvalConfig, EvalSetup, run_eval
    from .core.models import load_lora_receiver
    from .model.pair import C2CModel
    config = EvalConfig(benchmarks=args.bench.split(","), methods=args.methods.split(","), scoring=args.scoring,
                        split=args.split, limit=args.limit, seed=args.seed, out=args.out, data_dir=args.data_dir,
                        skip_bad=args.skip_bad, recompute=args.recompute, method_limits=limits,
                        throughput_batch=args.throughput_batch, t2t_batch=args.t2t_batch,
                        batch_size=args.batch_size)
    if args.fuser:
        pair = C2CModel.from_pretrained(args.fuser, dtype=args.dtype, device=args.device)
    else:  # the models alone: an untrained pair, whose receiver with fusion off is the receiver baseline
        pair = C2CModel.create(args.receiver or DEFAULT_RECEIVER, (args.sharer or [DEFAULT_SHARER])[:1],
                               chat_template=not args.no_chat_template, dtype=args.dtype, device=args.device)
    lora = load_lora_receiver(args.lora, args.dtype, args.device) if args.lora else None
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise SystemExit(f"error: --max-new-tokens must be >= 1, got {args.max_new_tokens}")
    budget = args.max_new_tokens or (FREE_MAX_NEW_TOKENS if args.scoring == "free" else 64)
    setup = EvalSetup(pair, lora, fuser_path=args.fuser, fused=bool(args.fuser), t2t_tokens=args.t2t_tokens,
                      max_new_tokens=budget)
    run_eval(config, setup)
    print((Path(config.out) / "table.md").read_text())
    print(f"per-item records, summary.json and the plot are in {config.out}")


def cmd_chat(args) -> None:
    if args.max_new_tokens < 1:
        raise SystemExit(f"error: --max-new-tokens must be >= 1, got {args.max_new_tokens}")
    from .serve import chat
    chat(_load_pair(args), max_new_tokens=args.max_new_tokens)


def cmd_serve(args) -> None:
    from .serve import serve
    if args.max_context_chars < 1:
        raise SystemExit(f"error: --max-context-chars must be at least 1, got {args.max_context_chars}")
    if args.context_cache_mb < 0:
        raise SystemExit(f"error: --context-cache-mb must be >= 0, got {args.context_cache_mb}")
    pair = _load_pair(args)
    pair.context_memo.max_bytes = int(args.context_cache_mb * 2**20)
    serve(pair, host=args.host, port=args.port, api_key=args.api_key, max_context_chars=args.max_context_chars)


def cmd_convert_reference(args) -> None:
    from .interop.reference import convert_reference
    output = convert_reference(args.dir, args.out, args.receiver, [args.sharer] if args.sharer else None,
                               args.token_alignment, dtype=args.dtype, device=args.device)
    print(f"saved to {output}; use it with: c2c generate --fuser {output} \"...\"")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="c2c", description="Cache-to-Cache: LLMs talking through their KV-caches")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect = commands.add_parser("inspect", help="shapes, layer map, fuser size and token alignment of a pair")
    inspect.add_argument("--fuser", help="inspect a trained or converted fuser folder (its pair and settings)")
    inspect.add_argument("--receiver", default=DEFAULT_RECEIVER)
    inspect.add_argument("--sharer", action="append")
    inspect.add_argument("--fuser-hidden", type=int, default=128)
    inspect.add_argument("--layer-map", default="last_aligned", help=f"one of {', '.join(LAYER_MAPS)} (default "
                                                                     "last_aligned, the paper's terminal alignment)")
    inspect.add_argument("--token-alignment", default="offsets", choices=TOKEN_ALIGNMENTS,
                         help="default offsets; identity is chosen by itself for the same tokenizer")
    inspect.add_argument("--no-chat-template", action="store_true")
    inspect.add_argument("--text", help="sample text for the alignment report")
    inspect.add_argument("--json", action="store_true")
    _model_arguments(inspect)
    inspect.set_defaults(run=cmd_inspect)

    generate = commands.add_parser("generate", help="answer prompts with the fused pair")
    _pair_arguments(generate)
    generate.add_argument("prompt", nargs="*", help="prompt(s); read from standard input if none")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, help="with --sample: > 0 (default 0.7)")
    generate.add_argument("--top-p", type=float, help="with --sample: in (0, 1] (default 0.9)")
    generate.add_argument("--top-k", type=int, help="with --sample: keep the k likeliest tokens (default: all)")
    generate.add_argument("--stop", action="append", help="stop string (repeatable)")
    generate.add_argument("--no-stream", action="store_true")
    generate.add_argument("--no-fuse", action="store_true", help="the receiver alone (it ignores --sharer-context)")
    generate.add_argument("--sharer-context", metavar="FILE",
                          help="a UTF-8 text file that only the sharer reads, ahead of each prompt; the receiver "
                               "never sees its text (it gets it translated or fused from the sharer's cache); or a "
                               ".safetensors context that c2c read-context translated before")
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(run=cmd_generate)

    read = commands.add_parser("read-context", help="translate a context once and save it for later questions",
                               description="The sharer reads a text file once; its K/V, translated into the "
                                           "receiver's, are saved to a .safetensors file that c2c generate "
                                           "--sharer-context takes (no sharer pass then). Needs a translator.")
    _pair_arguments(read)
    read.add_argument("--context", required=True, metavar="FILE", help="the UTF-8 text file the sharer reads")
    read.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to save the translated context")
    read.add_argument("--sharer-index", type=int, default=0, help="which sharer reads it (default 0)")
    read.set_defaults(run=cmd_read_context)

    train = commands.add_parser("train", help="train a fuser (or the LoRA baseline) from a recipe")
    train.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/)")
    train.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its output folder")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an output folder that holds an earlier run (it is deleted)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any recipe key (YAML value)")
    train.add_argument("--output")
    train.add_argument("--method", choices=["c2c", "lora"])
    train.add_argument("--steps", type=int)
    train.add_argument("--epochs", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--grad-accum", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--max-examples", type=int)
    _model_arguments(train, default_dtype=None)
    train.set_defaults(run=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate methods and baselines on benchmarks")
    _pair_arguments(evaluate)
    evaluate.add_argument("--bench", required=True, help="comma-separated names or generic MC .jsonl paths; "
                                                         "NAME:SPLIT overrides --split for one (e.g. ceval:val), "
                                                         "NAME:SPLIT:N also --limit (e.g. synthetic-3fact:test:200)")
    evaluate.add_argument("--methods", default="receiver,sharer,c2c",
                          help=f"comma-separated, from: {', '.join(METHODS)} (default receiver,sharer,c2c)")
    evaluate.add_argument("--scoring", default="cloze-options", choices=SCORINGS,
                          help="default cloze-options; free: a greedy free-text answer scored by exact match, F1 and "
                               "answer recall against the references (squad) or the gold choice's text")
    evaluate.add_argument("--split", default="test", help="test (default), dev, train or val, as the benchmark has")
    evaluate.add_argument("--limit", type=int, help="a seeded sample of N items per benchmark; a larger N extends "
                                                    "a smaller one, and finished items are reused from --out")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", default="results/eval")
    evaluate.add_argument("--data-dir", help="a local folder in the benchmark data layout (see the README; default: "
                                             "$C2C_DATA_DIR, else each benchmark's default Hugging Face dataset); "
                                             "hf for that hub dataset explicitly; or "
                                             "hf:OWNER/NAME[:CONFIG] or OWNER/NAME for a hub dataset "
                                             "(needs pip install 'c2c[hub]')")
    evaluate.add_argument("--lora", metavar="DIR", help="LoRA run folder for the lora-receiver method")
    evaluate.add_argument("--method-limit", action="append", metavar="METHOD=N",
                          help="evaluate METHOD on the first N items of the sample only (e.g. t2t=50)")
    evaluate.add_argument("--t2t-tokens", type=int, default=64, help="sharer's budget in the t2t baseline")
    evaluate.add_argument("--t2t-batch", type=int, default=1, metavar="N",
                          help="write t2t's sharer texts N items at a time (faster on many items; latency statistics "
                               "then come only from items run one at a time)")
    evaluate.add_argument("--batch-size", type=int, metavar="N",
                          help="score N items per forward, each record bearing 1/N of the batch's time, which "
                               "then counts as throughput, not latency (default: 8 on a GPU, 1 on a CPU)")
    evaluate.add_argument("--max-new-tokens", type=int, help="answer budget of the generate scoring (default 64) "
                                                               f"and the free one (default {FREE_MAX_NEW_TOKENS})")
    evaluate.add_argument("--no-chat-template", action="store_true", help="without --fuser: raw prompts")
    evaluate.add_argument("--throughput-batch", type=int, metavar="N",
                          help="also time batched generation (N prompts at a time) for the receiver and C2C")
    evaluate.add_argument("--skip-bad", action="store_true", help="skip malformed rows (reported)")
    evaluate.add_argument("--recompute", action="store_true", help="ignore finished per-item records")
    evaluate.set_defaults(run=cmd_eval)

    chat = commands.add_parser("chat", help="chat with the fused pair in the terminal",
                               description="Chat with the fused pair in the terminal. Commands: /context FILE "
                                           "(a text file only the sharer reads, ahead of each following message), "
                                           "/context off, /sharer off|on (the receiver alone, or fused again), "
                                           "/reset, /quit (or Ctrl-D).")
    _pair_arguments(chat)
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.set_defaults(run=cmd_chat)

    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server",
                                description="OpenAI-compatible HTTP server: POST /v1/chat/completions and "
                                            "/v1/completions, GET /v1/models and /health. Extra request fields: "
                                            '"c2c": false (the receiver alone) and "sharer_context": "TEXT" (a text '
                                            "only the sharer reads; at most --max-context-chars characters).")
    _pair_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require the header 'Authorization: Bearer KEY' on /v1")
    serve.add_argument("--max-context-chars", type=int, default=32000, metavar="N",
                       help="longest sharer_context a request may send, in characters (default 32000; longer: 400)")
    serve.add_argument("--context-cache-mb", type=float, default=1024, metavar="MB",
                       help="translated contexts kept for repeated sharer_context texts, by content (default 1024 "
                            "MiB of K/V; 0: read every context afresh)")
    serve.set_defaults(run=cmd_serve)

    convert = commands.add_parser("convert-reference", help="convert a fuser trained with the reference "
                                                            "implementation (thu-nics/C2C) to a c2c checkpoint")
    convert.add_argument("dir", metavar="DIR", help="the reference's run folder (config.json + final/), or its "
                                                    "final/ or checkpoint-N/ folder (projector_{i}.pt, "
                                                    "projector_config.json)")
    convert.add_argument("--out", required=True, help="output folder for the c2c checkpoint")
    convert.add_argument("--receiver", metavar="SPEC",
                         help="receiver spec (default: model.base_model of the run's config.json)")
    convert.add_argument("--sharer", metavar="SPEC",
                         help="sharer spec (default: model.teacher_model of the run's config.json)")
    convert.add_argument("--token-alignment", metavar="MODE", help="default: receiver_ids when the reference did "
                                                                   "not align tokens, else its alignment_strategy")
    _model_arguments(convert)
    convert.set_defaults(run=cmd_convert_reference)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import warnings
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"  # one line, no source line under it
    if hasattr(args, "verbose"):  # a command that loads models: "Loading weights" bars only with --verbose
        from transformers.utils import logging as transformers_logging
        (transformers_logging.enable_progress_bar if args.verbose else transformers_logging.disable_progress_bar)()
    from .data import DataError
    from .core.models import ModelLoadError
    from .model.config import CheckpointError
    from .training.recipe import RecipeError
    from .training.train import TrainingError, TrainingInterrupted
    try:
        args.run(args)
    except TrainingInterrupted as error:  # Ctrl-C: a clean stop, one line on how to go on
        print(error, file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except (ModelLoadError, CheckpointError, RecipeError, TrainingError, DataError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
