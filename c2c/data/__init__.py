"""Benchmarks, prompt formats and training data. Pure Python (no torch), so that it stays cheap to import.

    rows        row readers and parsers: each benchmark schema's rows into one `MCItem` form (shared)
    squad       SQuAD v1.1 (free-text answers): the official JSON, its rows, splits by article
    local       local files as a source: BENCHMARKS (folders, patterns, splits), the data dir (C2C_DATA_DIR)
    hub         the Hugging Face hub as a peer source over the same parsers (needs `datasets` only when loading)
    benchmarks  load_benchmark over the two sources (data_dir, else C2C_DATA_DIR, else the hub), seeded_sample
    prompts     the prompts used by both training and evaluation; the letter named in a generated answer
    training    instruction/chat data and benchmark items as `Conversation`s

Each module imports only those listed above it. The names callers use are re-exported here.
"""

from .benchmarks import Benchmark, load_benchmark, seeded_sample
from .local import BENCHMARKS, DATA_DIR_ENV, BenchmarkSpec, data_dir_from_env
from .prompts import cloze_continuations, extract_choice_letter, free_prompt, mc_prompt
from .rows import DataError, MCItem
from .squad import QUESTION_TYPES, article_splits, question_type
from .training import (
    Conversation,
    load_chat_jsonl,
    load_instruction_json,
    load_training_data,
    mc_conversations,
    resolve_data_path,
)

__all__ = [
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "Benchmark",
    "BenchmarkSpec",
    "Conversation",
    "DataError",
    "MCItem",
    "QUESTION_TYPES",
    "article_splits",
    "cloze_continuations",
    "data_dir_from_env",
    "extract_choice_letter",
    "free_prompt",
    "load_benchmark",
    "load_chat_jsonl",
    "load_instruction_json",
    "load_training_data",
    "mc_conversations",
    "mc_prompt",
    "question_type",
    "resolve_data_path",
    "seeded_sample",
]
