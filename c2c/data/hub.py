"""Benchmarks from the Hugging Face hub: ``load_benchmark(..., data_dir="hf")``, ``c2c eval --data-dir hf``.

Each built-in benchmark has a default hub dataset (HUB). Its rows go through the same row parsers as local files
(c2c.data.rows), checks and report; any other dataset is read with the generic schema (question, choices, answer
as an index or a letter, optional id and subject). Needs the optional `datasets` package
(``pip install 'c2c[hub]'``), imported only when loading; it honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .local import canonical_split
from .rows import DataError, MCItem, Row, Source, get, parse_arc, parse_ceval, parse_generic, parse_mmlu_redux
from .squad import parse_squad, split_rows

MMLU_SUBJECTS = tuple(
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology college_chemistry "
    "college_computer_science college_mathematics college_medicine college_physics computer_security "
    "conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts "
    "high_school_biology high_school_chemistry high_school_computer_science high_school_european_history "
    "high_school_geography high_school_government_and_politics high_school_macroeconomics "
    "high_school_mathematics high_school_microeconomics high_school_physics high_school_psychology "
    "high_school_statistics high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing medical_genetics "
    "miscellaneous moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting "
    "professional_law professional_medicine professional_psychology public_relations security_studies "
    "sociology us_foreign_policy virology world_religions".split()
)
CEVAL_SUBJECTS = tuple(
    "accountant advanced_mathematics art_studies basic_medicine business_administration "
    "chinese_language_and_literature civil_servant clinical_medicine college_chemistry college_economics "
    "college_physics college_programming computer_architecture computer_network discrete_mathematics "
    "education_science electrical_engineer environmental_impact_assessment_engineer fire_engineer "
    "high_school_biology high_school_chemistry high_school_chinese high_school_geography high_school_history "
    "high_school_mathematics high_school_physics high_school_politics ideological_and_moral_cultivation law "
    "legal_professional logic mao_zedong_thought marxism metrology_engineer middle_school_biology "
    "middle_school_chemistry middle_school_geography middle_school_history middle_school_mathematics "
    "middle_school_physics middle_school_politics modern_chinese_history operating_system physician "
    "plant_protection probability_and_statistics professional_tour_guide sports_science tax_accountant "
    "teacher_qualification urban_and_rural_planner veterinary_medicine".split()
)
_FIX = "Check the id, or run where the hub is reachable, or pass a local folder with --data-dir."


# --------------------------------------------------------------------------- hub rows -> local row parsers


def _json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def _cells(record: dict) -> dict:
    """A hub row as a local CSV row: text cells, empty where the hub has None."""
    return {key: "" if value is None else str(value) for key, value in record.items()}


def _arc(record: dict, row: Row) -> MCItem:
    return parse_arc(_json(record), row)


def _openbookqa(record: dict, row: Row) -> MCItem:
    """The ai2_arc schema, with `question_stem` for `question`."""
    return parse_arc(_json({**record, "question": get(record, "question_stem")}), row)


def _mmlu_redux(record: dict, row: Row) -> MCItem | str:
    return parse_mmlu_redux(_cells(record), row)


def _ceval(record: dict, row: Row) -> MCItem:
    return parse_ceval(_cells(record), row)


def _generic(record: dict, row: Row) -> MCItem:
    return parse_generic(_json(record), row)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the hub and how its rows are parsed."""

    path: str
    parse: Callable[[dict, Row], MCItem | str] = _generic
    config: str | None = None
    subjects: tuple[str, ...] = ()  # one config per subject, loaded in turn; each item's subject
    splits: dict[str, str] = field(default_factory=dict)  # our split name -> the hub's
    # our splits cut from one hub split: (where, record) rows, our split -> that split's rows
    select: Callable[[Iterable[tuple[str, dict]], str], Iterable[tuple[str, dict]]] | None = None


_VALIDATION = {"dev": "validation"}

HUB: dict[str, HubDataset] = {
    "arc-easy": HubDataset("allenai/ai2_arc", _arc, "ARC-Easy", splits=_VALIDATION),
    "arc-challenge": HubDataset("allenai/ai2_arc", _arc, "ARC-Challenge", splits=_VALIDATION),
    "openbookqa": HubDataset("allenai/openbookqa", _openbookqa, "main", splits=_VALIDATION),
    "mmlu": HubDataset("cais/mmlu", _generic, "all"),
    "mmlu-redux": HubDataset("edinburgh-dawg/mmlu-redux-2.0", _mmlu_redux, subjects=MMLU_SUBJECTS),
    "ceval": HubDataset("ceval/ceval-exam", _ceval, subjects=CEVAL_SUBJECTS),
    "commonsenseqa": HubDataset("tau/commonsense_qa", _arc, splits=_VALIDATION),
    "squad": HubDataset("rajpurkar/squad", parse_squad, splits=dict.fromkeys(("train", "dev", "test"), "validation"),
                        select=split_rows),  # SQuAD v1.1 dev, split by article as the local file
}


def _hub_dataset(name: str, path: str | None, config: str | None) -> HubDataset:
    """The benchmark's default dataset (path None), or `path` read as a default of that id or generically."""
    if path is None:
        if name not in HUB:
            raise DataError(
                f"{name!r} has no default Hugging Face dataset (those with one: {', '.join(HUB)}); "
                "name a dataset with --data-dir hf:OWNER/NAME[:CONFIG]"
            )
        hub = HUB[name]
    else:
        own = [HUB[name]] if name in HUB else []
        hub = next((h for h in own + list(HUB.values()) if h.path == path), HubDataset(path))
    if config:
        hub = replace(hub, subjects=(config,)) if hub.subjects else replace(hub, config=config)
    return hub


_HUB_ID = re.compile(r"\w[\w.-]*/\w[\w.-]*")  # OWNER/NAME, as on the Hugging Face hub


def hub_id(data_dir: str | Path | None) -> tuple[str | None, str | None] | None:
    """(dataset id, config) when data_dir names a hub dataset, the id None for each benchmark's default;
    None for a local folder. An existing local folder always wins."""
    if data_dir is None or Path(data_dir).is_dir():
        return None
    text = str(data_dir)
    if text in ("hf", "hf:"):
        return None, None
    if text.startswith("hf:"):
        dataset, _, config = text[3:].partition(":")
        return dataset or None, config or None
    if _HUB_ID.fullmatch(text) and not Path(text).exists():
        return text, None
    return None


# --------------------------------------------------------------------------- loading


def _load_dataset() -> Callable:
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(
            "loading from the Hugging Face hub needs the `datasets` package: pip install 'c2c[hub]' "
            "(or pip install datasets); or pass a local folder with --data-dir"
        ) from None
    return load_dataset


def _rows(records: Iterable[dict], asked: str) -> Iterator[tuple[str, dict]]:
    """(where, record) per hub row. Records with a subject and no id get the local MMLU id, subject/n
    with n counting within the subject, so that cais/mmlu's "all" config gives the local files' ids."""
    seen: Counter = Counter()
    for index, record in enumerate(records):
        subject = str(record.get("subject") or "")
        if subject and record.get("id") in (None, ""):
            record = {**record, "id": f"{subject}/{seen[subject]}"}
            seen[subject] += 1
        yield f"{asked} row {index}", record


def _source(load_dataset: Callable, path: str, config: str | None, split: str, subject: str | None) -> Source:
    asked = f"{path} ({f'config {config}, ' if config else ''}split {split})"
    try:
        records = load_dataset(path, name=config, split=split)
    except Exception as e:  # offline, no such dataset / config / split: `datasets` raises many types
        message = " ".join(str(e).split())[:300].rstrip(".")
        raise DataError(f"Hugging Face dataset {asked} not loaded: {type(e).__name__}: {message}. {_FIX}") from e
    return Source(asked, _rows(records, asked), subject, config or path.rsplit("/", 1)[-1])


def hub_sources(
    name: str, split: str, path: str | None = None, config: str | None = None
) -> tuple[str, list[Source], Callable[[dict, Row], MCItem | str]]:
    """(split, sources, row parser) for load_benchmark: `name` from the hub dataset `path` (None: its
    default) and `config`; each subject config of MMLU-Redux and C-Eval is one source."""
    hub = _hub_dataset(name, path, config)
    split = canonical_split(name, split)
    load_dataset = _load_dataset()
    hub_split = hub.splits.get(split, split)
    configs = [(subject, subject) for subject in hub.subjects] or [(hub.config, None)]
    sources = [_source(load_dataset, hub.path, hub_config, hub_split, subject) for hub_config, subject in configs]
    if hub.select is not None:
        sources = [replace(source, rows=hub.select(source.rows, split)) for source in sources]
    return split, sources, hub.parse
