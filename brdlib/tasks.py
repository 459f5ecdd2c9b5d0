"""Downstream tasks: XNLI-en, RTE, CB, PAWS-X-en, BoolQ, SST-2 and BIG-bench, as scored multiple-choice examples.

    from brdlib.tasks import load_examples, task_names, split_info
    for task in task_names(cfg):                       # "bigbench" expands to the selected bigbench:<task>
        examples = load_examples(cfg, task, "test")    # stratified subsample of data.max_examples_per_task

**Scoring contract.** Each :class:`Example` is scored as the paper does (§3.3): for every candidate ``i``, the
average per-token log-probability of ``example.continuations[i]`` given ``example.prompt``, where
``continuations[i] = target_delimiter + candidates[i]``. Every Table 9 template ends with ``Answer:``, so the
candidate sits at the very end: the prompt is the filled template verbatim, the delimiter is one space (the
standard reading of a template that ends in a colon), and no template puts the candidate mid-text (so there is no
suffix after it). BIG-bench examples carry their own delimiter (see :mod:`brdlib.bigbench`).

**Table 9, verbatim** (the paper's text; ``{field}`` filled from the source's fields, stripped of surrounding
whitespace; candidates in the table's order):

======== =================================================================================== ====================
task     template                                                                            candidates
======== =================================================================================== ====================
XNLI     ``{premise} Question: Does this imply that "{hypothesis}"? Yes, no or maybe? Answer:`` Yes, No, Maybe
RTE, CB  ``Question: Can we infer that "{hypothesis}" ? {premise} Answer:``                  Yes, No, Maybe
PAWS-X   ``Sentence 1: {sentence1} Sentence 2: {sentence2} Question: Do Sentence 1 and        Yes, No
         Sentence 2 express the same meaning? Answer:``
BoolQ    ``{passage} Question: {question} Answer:``                                           Yes, No
SST-2    ``Question: Does the following sentence have a positive or negative sentiment?       positive, negative
         Sentence: {sentence} Answer:``
======== =================================================================================== ====================

Label mappings (checked against the hub datasets' cards and the mirror's MANIFEST.md):
XNLI entailment→Yes, contradiction→No, neutral→Maybe (hub/mirror ids 0 entailment, 1 neutral, 2 contradiction);
CB the same (SuperGLUE ids 0 entailment, 1 contradiction, 2 neutral); RTE entailment→Yes, not_entailment→No —
RTE shares CB's row in Table 9 but has two labels, so its candidates are Yes, No (Maybe would be a candidate that
is never gold); PAWS-X 1 (paraphrase)→Yes, 0→No; BoolQ true→Yes, false→No; SST-2 1 (positive)→positive,
0→negative.

**Splits.** ``test`` is the evaluation split whatever the source calls it: XNLI test (5010), RTE val (277),
CB val (56), PAWS-X test (2000; in the mirror its labels are derived from the de/zh test files, see MANIFEST —
``data.pawsx_eval_split: dev`` evaluates on the exact-labelled dev split instead), BoolQ val (3270), SST-2 val
(872), and the whole task for BIG-bench. ``train`` and ``tune`` are each task's training set and a tuning set;
where a source has no tuning set, tune is carved from train, and where it has no training set, both are carved
with the fixed ``data.split_seed`` (stratified by label) from a labelled split — disjoint from ``test`` when one
exists (PAWS-X: the other labelled split), otherwise from the evaluation split itself (BoolQ in the mirror,
BIG-bench as in A.3: 80/10/10). ``heldout`` is the part of ``test`` that no train/tune example came from: the
relaxed and supervised protocols evaluate on it; it equals ``test`` where train/tune come from elsewhere.
:func:`split_info` records all of this for the tables.

**Bad data** fails with :class:`TaskDataError` naming the task, the file and the row; rows skipped for a reason
(unlabelled hub rows) are counted in ``split_info(...).skipped``, never dropped silently.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from brdlib import bigbench

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from brdlib.config import Config

__all__ = [
    "BOOLQ_IDS", "CB_IDS", "EVAL_COUNTS", "HUB", "MIRROR_OR_SDIST", "PAWSX_IDS", "RTE_IDS", "SPLITS", "SST2_IDS",
    "T", "TABLE9_TASKS", "TASKS", "XNLI_IDS", "Example", "HubSpec", "Pool", "Record", "SplitInfo", "SplitPlan",
    "TaskData", "TaskDataError", "TaskSpec", "bigbench_task_selection", "boolq_from_row", "data_summary",
    "examples_from_hub_rows", "gold_label", "gold_shares", "hub_records", "label_balance", "label_balance_figure",
    "load_examples", "nli_from_hf_row", "nli_from_named_row", "parse_task", "pawsx_from_hf_row", "read_jsonl",
    "read_tsv", "reduced_bigbench_tasks", "split_info", "split_plan", "sst2_from_hf_row", "stratified_partition",
    "stratified_sample", "task_data", "task_names",
]

log = logging.getLogger(__name__)

TABLE9_TASKS: tuple[str, ...] = ("xnli", "rte", "cb", "pawsx", "boolq", "sst2")
EVAL_COUNTS: dict[str, int] = {"xnli": 5010, "rte": 277, "cb": 56, "pawsx": 2000, "boolq": 3270, "sst2": 872}
"""The paper's evaluation split sizes (§4, DESIGN); the mirror and the hub both give exactly these."""
SPLITS: tuple[str, ...] = ("train", "tune", "test", "heldout")

T = TypeVar("T")


class TaskDataError(ValueError):
    """Task data that cannot be used: unknown task or split, missing file, malformed row (all named)."""


@dataclass(frozen=True)
class Example:
    """One multiple-choice example, ready to score (module docstring: the scoring contract)."""

    task: str  # "xnli", "rte", "cb", "pawsx", "boolq", "sst2", or "bigbench:<task>[:<subtask>]"
    example_id: str
    prompt: str  # the Table 9 prompt, verbatim, filled; candidates are scored as continuations of it
    candidates: tuple[str, ...]
    gold: int
    split: str  # "train" | "tune" | "test" (the evaluation split is "test" whatever the source calls it)
    source: str  # file or hub dataset it came from
    text: str  # the raw task input (premise/hypothesis etc. joined by newlines), for BRD² on task inputs
    target_delimiter: str = " "  # put between the prompt and a candidate
    label: str = ""  # the gold label in the source's own schema, e.g. "entailment"
    scores: tuple[float, ...] | None = None  # BIG-bench target_scores (several answers may score 1)
    fields: tuple[tuple[str, str], ...] = ()  # Table 9 tasks: the template's fields as the source gave them

    @property
    def continuations(self) -> tuple[str, ...]:
        """What is scored after the prompt, one per candidate: ``target_delimiter + candidate``."""
        return tuple(self.target_delimiter + c for c in self.candidates)


@dataclass(frozen=True)
class TaskSpec:
    """A Table 9 task: its template, candidates, and where each label's gold answer sits."""

    name: str
    template: str
    candidates: tuple[str, ...]
    label_to_gold: dict[str, int]
    fields: tuple[str, ...]

    def prompt(self, values: dict[str, str]) -> str:
        return self.template.format(**{f: values[f].strip() for f in self.fields})


_NLI_RTE_CB = 'Question: Can we infer that "{hypothesis}" ? {premise} Answer:'
TASKS: dict[str, TaskSpec] = {
    "xnli": TaskSpec(
        "xnli",
        '{premise} Question: Does this imply that "{hypothesis}"? Yes, no or maybe? Answer:',
        ("Yes", "No", "Maybe"),
        {"entailment": 0, "contradiction": 1, "neutral": 2},
        ("premise", "hypothesis"),
    ),
    "rte": TaskSpec(
        "rte", _NLI_RTE_CB, ("Yes", "No"), {"entailment": 0, "not_entailment": 1}, ("premise", "hypothesis")
    ),
    "cb": TaskSpec(
        "cb", _NLI_RTE_CB, ("Yes", "No", "Maybe"), {"entailment": 0, "contradiction": 1, "neutral": 2},
        ("premise", "hypothesis"),
    ),
    "pawsx": TaskSpec(
        "pawsx",
        "Sentence 1: {sentence1} Sentence 2: {sentence2} Question: Do Sentence 1 and Sentence 2 express the same "
        "meaning? Answer:",
        ("Yes", "No"),
        {"paraphrase": 0, "not_paraphrase": 1},
        ("sentence1", "sentence2"),
    ),
    "boolq": TaskSpec("boolq", "{passage} Question: {question} Answer:", ("Yes", "No"), {"true": 0, "false": 1},
                      ("passage", "question")),
    "sst2": TaskSpec(
        "sst2",
        "Question: Does the following sentence have a positive or negative sentiment? Sentence: {sentence} Answer:",
        ("positive", "negative"),
        {"positive": 0, "negative": 1},
        ("sentence",),
    ),
}
"""Table 9, verbatim."""

# Label schemas ---------------------------------------------------------------------------------------------

XNLI_IDS = ("entailment", "neutral", "contradiction")  # facebook/xnli ClassLabel; the mirror's jsonl uses HF ids
RTE_IDS = ("entailment", "not_entailment")  # aps/super_glue rte ClassLabel
CB_IDS = ("entailment", "contradiction", "neutral")  # aps/super_glue cb ClassLabel
BOOLQ_IDS = ("false", "true")  # aps/super_glue boolq ClassLabel: 0 False, 1 True
PAWSX_IDS = ("not_paraphrase", "paraphrase")  # google-research-datasets/paws-x: 0/1 (-1 = missing label)
SST2_IDS = ("negative", "positive")  # nyu-mll/glue sst2 ClassLabel


@dataclass(frozen=True)
class Record:
    """A source row reduced to the template's fields and a label name of the task's schema."""

    row_id: str
    fields: dict[str, str]
    label: str


@dataclass
class Pool:
    """The records of one source file or hub split."""

    name: str
    source: str
    records: list[Record]
    skipped: Counter = field(default_factory=Counter)


# Row parsing: one function per source format, each naming task, file and row on bad data -----------------


def _bad(task: str, source: str, row: int | str, what: str) -> TaskDataError:
    return TaskDataError(f"task {task}: {source}, row {row}: {what}")


def _label_from_id(task: str, source: str, row: int | str, value: Any, names: Sequence[str]) -> str | None:
    """A ClassLabel id → name; None for -1 (no label); anything else is an error."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _bad(task, source, row, f"label {value!r} is not an integer id; accepted: 0..{len(names) - 1}")
    try:
        idx = int(value)
    except ValueError:
        raise _bad(task, source, row, f"label {value!r} is not an integer id; accepted: 0..{len(names) - 1}") from None
    if idx == -1:
        return None
    if not 0 <= idx < len(names):
        accepted = ", ".join(map(str, range(len(names))))
        raise _bad(task, source, row, f"label {value!r} out of range; accepted: {accepted}")
    return names[idx]


def _label_from_name(task: str, source: str, row: int | str, value: Any, accepted: dict[str, str]) -> str:
    key = str(value).strip().lower()
    if key not in accepted:
        raise _bad(task, source, row, f"label {value!r} is not one of {', '.join(sorted(accepted))}")
    return accepted[key]


def _text(task: str, source: str, row: int | str, d: dict[str, Any], key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _bad(task, source, row, f"field {key!r} is missing or empty")
    return value


def read_jsonl(path: Path, task: str) -> list[tuple[int, dict[str, Any]]]:
    """(1-based row, object) for every non-blank line of a JSON-lines file."""
    if not path.is_file():
        raise TaskDataError(f"task {task}: file {path} is missing")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _bad(task, str(path), row, f"not valid JSON ({err})") from None
            if not isinstance(obj, dict):
                raise _bad(task, str(path), row, "not a JSON object")
            rows.append((row, obj))
    return rows


def read_tsv(path: Path, task: str, columns: int, header: Sequence[str] | None = None) -> list[tuple[int, list[str]]]:
    """(1-based row, cells) of a tab-separated file with no quoting; checks the header and the column count."""
    if not path.is_file():
        raise TaskDataError(f"task {task}: file {path} is missing")
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row, cells in enumerate(reader, start=1):
            if row == 1 and header is not None:
                if [c.strip() for c in cells[: len(header)]] != list(header):
                    raise _bad(task, str(path), 1, f"header {cells!r} is not {list(header)!r}")
                continue
            if not cells or cells == [""]:
                continue
            if len(cells) != columns:
                raise _bad(task, str(path), row, f"{len(cells)} tab-separated columns, expected {columns}")
            rows.append((row, cells))
    return rows


def nli_from_hf_row(task: str, source: str, row: int | str, d: dict[str, Any], ids: Sequence[str]) -> Record | None:
    """XNLI (facebook/xnli, mirror jsonl) or SuperGLUE RTE/CB hub rows: premise, hypothesis, integer label."""
    label = _label_from_id(task, source, row, d.get("label"), ids)
    fields = {k: _text(task, source, row, d, k) for k in ("premise", "hypothesis")}
    return None if label is None else Record(str(d.get("idx", row)), fields, label)


def nli_from_named_row(task: str, source: str, row: int | str, d: dict[str, Any], names: Sequence[str]) -> Record:
    """SuperGLUE jsonl as in the mirror (RTE, CB): the label is a word."""
    label = _label_from_name(task, source, row, d.get("label"), {n: n for n in names})
    fields = {k: _text(task, source, row, d, k) for k in ("premise", "hypothesis")}
    return Record(str(d.get("idx", row)), fields, label)


def boolq_from_row(task: str, source: str, row: int | str, d: dict[str, Any]) -> Record | None:
    """BoolQ: mirror jsonl label 'true'/'false' (or a JSON bool); hub (aps/super_glue) label 0 False / 1 True."""
    value = d.get("label")
    if isinstance(value, bool):
        label: str | None = "true" if value else "false"
    elif isinstance(value, int):
        label = _label_from_id(task, source, row, value, BOOLQ_IDS)
    else:
        label = _label_from_name(task, source, row, value, {"true": "true", "false": "false"})
    fields = {"passage": _text(task, source, row, d, "passage"), "question": _text(task, source, row, d, "question")}
    return None if label is None else Record(str(d.get("idx", row)), fields, label)


def pawsx_from_hf_row(task: str, source: str, row: int | str, d: dict[str, Any]) -> Record | None:
    """google-research-datasets/paws-x (en): id, sentence1, sentence2, label 0/1 (-1 = missing)."""
    label = _label_from_id(task, source, row, d.get("label"), PAWSX_IDS)
    fields = {k: _text(task, source, row, d, k) for k in ("sentence1", "sentence2")}
    return None if label is None else Record(str(d.get("id", row)), fields, label)


def sst2_from_hf_row(task: str, source: str, row: int | str, d: dict[str, Any]) -> Record | None:
    """nyu-mll/glue sst2: sentence, label 0 negative / 1 positive (-1 in the unlabelled test split), idx."""
    label = _label_from_id(task, source, row, d.get("label"), SST2_IDS)
    fields = {"sentence": _text(task, source, row, d, "sentence")}
    return None if label is None else Record(str(d.get("idx", row)), fields, label)


# Mirror pools ------------------------------------------------------------------------------------------


def _mirror_pool(mirror: Path, task: str, pool: str) -> Pool:
    """One labelled file of the mirror (MANIFEST.md), parsed into records."""
    recs: list[Record] = []
    skipped: Counter = Counter()

    def add(rec: Record | None) -> None:
        if rec is None:
            skipped["no label"] += 1
        else:
            recs.append(rec)

    if task == "xnli":
        rel = {"test": "xnli_en/test.jsonl", "train": "xnli_en/train_mnli_sample9k.jsonl",
               "dev": "xnli_en/dev-en.xtreme.tsv"}[pool]
        path = mirror / rel
        if pool == "dev":
            for row, (premise, hypothesis, word) in read_tsv(path, task, 3):
                label = _label_from_name(task, str(path), row, word, {n: n for n in XNLI_IDS})
                recs.append(Record(str(row), {"premise": premise, "hypothesis": hypothesis}, label))
        else:
            for row, d in read_jsonl(path, task):
                add(nli_from_hf_row(task, str(path), row, d, XNLI_IDS))
    elif task in ("rte", "cb"):
        rel = f"{task}/{pool}.jsonl"
        path = mirror / rel
        for row, d in read_jsonl(path, task):
            recs.append(nli_from_named_row(task, str(path), row, d, RTE_IDS if task == "rte" else CB_IDS))
    elif task == "boolq":
        rel = f"boolq/{pool}.jsonl"
        path = mirror / rel
        for row, d in read_jsonl(path, task):
            add(boolq_from_row(task, str(path), row, d))
    elif task == "sst2":
        rel = f"sst2/glue_sst2_resplit/{pool}.tsv"
        path = mirror / rel
        for row, (sentence, value) in read_tsv(path, task, 2, header=("sentence", "label")):
            label = _label_from_id(task, str(path), row, value, SST2_IDS)
            add(None if label is None else Record(str(row), {"sentence": sentence}, label))
    elif task == "pawsx":
        if pool == "dev":
            rel = "pawsx_en/dev-en.xtreme.tsv"
            path = mirror / rel
            for row, (s1, s2, value) in read_tsv(path, task, 3):
                add(pawsx_from_hf_row(task, str(path), row, {"id": row, "sentence1": s1, "sentence2": s2,
                                                             "label": value}))
        else:
            rel = "pawsx_en/test-en.derived_labels.tsv"
            path = mirror / rel
            header = ("id", "sentence1", "sentence2", "label", "label_de", "label_zh", "uncertain")
            for row, cells in read_tsv(path, task, 7, header=header):
                add(pawsx_from_hf_row(task, str(path), row, dict(zip(header, cells, strict=True))))
    else:  # pragma: no cover - guarded by the callers
        raise TaskDataError(f"unknown task {task!r}")
    return Pool(pool, f"mirror:{rel}", recs, skipped)


# Hub pools (the paper profile) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSpec:
    path: str
    config: str
    parse: Callable[[str, str, int | str, dict[str, Any]], Record | None]


HUB: dict[str, HubSpec] = {
    "xnli": HubSpec("facebook/xnli", "en", lambda t, s, r, d: nli_from_hf_row(t, s, r, d, XNLI_IDS)),
    "rte": HubSpec("aps/super_glue", "rte", lambda t, s, r, d: nli_from_hf_row(t, s, r, d, RTE_IDS)),
    "cb": HubSpec("aps/super_glue", "cb", lambda t, s, r, d: nli_from_hf_row(t, s, r, d, CB_IDS)),
    "boolq": HubSpec("aps/super_glue", "boolq", boolq_from_row),
    "pawsx": HubSpec("google-research-datasets/paws-x", "en", pawsx_from_hf_row),
    "sst2": HubSpec("nyu-mll/glue", "sst2", sst2_from_hf_row),
}
"""Hub dataset id, config and row parser of each Table 9 task (datasets' own ClassLabel ids). With
``data.hub_fixture_dir`` (the rehearsal profile) the same ``load_dataset`` call reads a local miniature of each
repository instead (README.md configs and parquet files in the hub's schema; tests/fixtures/hub)."""


def hub_records(task: str, rows: Sequence[dict[str, Any]], source: str) -> tuple[list[Record], Counter]:
    """Records of hub rows (row mapping tested on fixture rows in the hub's schema); -1 labels are skipped."""
    spec = HUB[task]
    recs, skipped = [], Counter()
    for i, d in enumerate(rows):
        rec = spec.parse(task, source, i, dict(d))
        if rec is None:
            skipped["label -1 (no label)"] += 1
        else:
            recs.append(rec)
    return recs, skipped


def examples_from_hub_rows(
    task: str, rows: Sequence[dict[str, Any]], source: str = "hub", split: str = "test"
) -> tuple[list[Example], Counter]:
    """Examples of rows in the hub dataset's own schema (:data:`HUB`), and the rows skipped by reason."""
    if task not in HUB:
        raise TaskDataError(f"unknown task {task!r}; accepted: {', '.join(HUB)}")
    recs, skipped = hub_records(task, rows, source)
    return _examples_from_pool(task, Pool(split, source, recs, skipped)), skipped


def _hub_pool(task: str, split: str, fixture_dir: Path | None = None) -> Pool:
    """One hub split, parsed; with ``fixture_dir`` (``data.hub_fixture_dir``) the same call reads the miniature of
    the hub repository under ``fixture_dir/<hub id>`` (tests/fixtures/hub/make_fixtures.py)."""
    from datasets import load_dataset

    spec = HUB[task]
    where = spec.path if fixture_dir is None else str(fixture_dir / spec.path)
    source = f"{'hub' if fixture_dir is None else 'hub-fixture'}:{spec.path}/{spec.config}:{split}"
    try:
        ds = load_dataset(where, spec.config, split=split)
    except Exception as err:  # noqa: BLE001 - any hub failure is reported with the dataset named
        raise TaskDataError(
            f"task {task}: could not load {source} from {'the hub' if fixture_dir is None else where} "
            f"({type(err).__name__}: {err})"
        ) from None
    recs, skipped = hub_records(task, ds, source)
    return Pool(split, source, recs, skipped)


# Split plans -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """Which pool is each split; ``carve`` names the pool train/tune are carved from when not given."""

    test: str
    train: str | None = None
    tune: str | None = None
    carve: str | None = None


def split_plan(cfg: Config, task: str) -> SplitPlan:
    """The pools of a Table 9 task for the profile's data source (module docstring: Splits)."""
    mirror = cfg.data.source != "hub"
    paws_dev = cfg.data.pawsx_eval_split == "dev"
    if task == "xnli":
        return SplitPlan("test", "train", "dev") if mirror else SplitPlan("test", "train", "validation")
    if task in ("rte", "cb"):
        return SplitPlan("val", "train", carve="train") if mirror else SplitPlan("validation", "train", carve="train")
    if task == "boolq":
        return SplitPlan("val", carve="val") if mirror else SplitPlan("validation", "train", carve="train")
    if task == "sst2":
        return SplitPlan("test", "train", "dev") if mirror else SplitPlan("validation", "train", carve="train")
    if task == "pawsx":
        if mirror:
            return SplitPlan("dev", carve="test") if paws_dev else SplitPlan("test", carve="dev")
        return SplitPlan("validation", "train", carve="train") if paws_dev else SplitPlan("test", "train", "validation")
    raise TaskDataError(f"unknown task {task!r}; accepted: {', '.join(TABLE9_TASKS)}, bigbench, bigbench:<task>")


@dataclass
class SplitInfo:
    """Where each split of a task came from, how big it is before subsampling, and what was skipped."""

    task: str
    sources: dict[str, str]
    sizes: dict[str, int]
    carved: str  # "" when nothing was carved, else how
    skipped: dict[str, int]
    note: str = ""


@dataclass
class TaskData:
    splits: dict[str, list[Example]]
    info: SplitInfo


# Stratified sampling and carving ------------------------------------------------------------------------------


def _groups(items: Sequence[T], key: Callable[[T], str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    return dict(sorted(groups.items()))


def stratified_sample(items: Sequence[T], n: int | None, seed: int, key: Callable[[T], str]) -> list[T]:
    """``n`` items keeping each stratum's share (largest remainder, ties broken at random), seeded, in order.

    Hand-written: scikit-learn's stratified split needs two members per stratum and n ≥ strata, which
    BIG-bench tasks with many distinct answers break.
    """
    if n is None or n >= len(items):
        return list(items)
    rng = random.Random(seed)
    groups = _groups(items, key)
    exact = {k: n * len(idx) / len(items) for k, idx in groups.items()}
    quota = {k: int(v) for k, v in exact.items()}
    tiebreak = {k: rng.random() for k in groups}
    for k in sorted(groups, key=lambda k: (quota[k] - exact[k], tiebreak[k]))[: n - sum(quota.values())]:
        quota[k] += 1
    chosen = [i for k, idx in groups.items() for i in rng.sample(idx, quota[k])]
    return [items[i] for i in sorted(chosen)]


def stratified_partition(
    items: Sequence[T], fractions: Sequence[float], seed: int, key: Callable[[T], str]
) -> list[list[T]]:
    """Split into ``len(fractions) + 1`` parts: part j+1 has ``round(fractions[j] * len(items))`` items drawn
    stratified from what is left, part 0 the rest; each part keeps the original order."""
    rest = list(range(len(items)))
    parts: list[list[int]] = []
    for j, frac in enumerate(fractions):
        part = stratified_sample(rest, round(frac * len(items)), seed + j, lambda i: key(items[i]))
        taken = set(part)
        rest = [i for i in rest if i not in taken]
        parts.append(part)
    return [[items[i] for i in p] for p in [rest, *parts]]


def gold_label(example: Example) -> str:
    """Stratum of an example: its gold answer's text."""
    return example.candidates[example.gold]


# Building examples -------------------------------------------------------------------------------------------


def _examples_from_pool(task: str, pool: Pool) -> list[Example]:
    spec = TASKS[task]
    out = []
    for rec in pool.records:
        if rec.label not in spec.label_to_gold:  # pragma: no cover - parsers only emit schema labels
            raise TaskDataError(f"task {task}: {pool.source}, row {rec.row_id}: label {rec.label!r} has no candidate")
        out.append(
            Example(
                task=task,
                example_id=f"{task}-{pool.name}-{rec.row_id}",
                prompt=spec.prompt(rec.fields),
                candidates=spec.candidates,
                gold=spec.label_to_gold[rec.label],
                split="test",
                source=pool.source,
                text="\n".join(rec.fields[f].strip() for f in spec.fields),
                label=rec.label,
                fields=tuple((f, rec.fields[f]) for f in spec.fields),
            )
        )
    return out


def _assemble(
    task: str, plan: SplitPlan, pools: dict[str, list[Example]], sources: dict[str, str], cfg: Config
) -> tuple[dict[str, list[Example]], dict[str, str], str]:
    """Apply a plan: given splits as they are, carved ones stratified with ``data.split_seed``.

    Returns the splits, each split's source, and how carving was done ("" if not).
    """
    f, seed = cfg.data.tune_fraction, cfg.data.split_seed
    test, src = pools[plan.test], sources
    carved = ""
    split_sources = {"test": src[plan.test]}
    if plan.carve == plan.test:  # no training data: carve train/tune from the evaluation split itself
        train, tune, heldout = stratified_partition(test, [f, f], seed, gold_label)
        carved = (f"train/tune/held-out = {1 - 2 * f:.0%}/{f:.0%}/{f:.0%} of the evaluation split "
                  f"(stratified, seed {seed}); protocols that train evaluate on the held-out part")
        split_sources.update(train=src[plan.test], tune=src[plan.test], heldout=f"{src[plan.test]} (held-out part)")
    elif plan.train is None:  # carve from another labelled split, disjoint from test
        assert plan.carve is not None
        train, tune = stratified_partition(pools[plan.carve], [f], seed, gold_label)
        heldout = test
        carved = f"train/tune = {1 - f:.0%}/{f:.0%} of {src[plan.carve]} (stratified, seed {seed}); no training split"
        split_sources.update(train=src[plan.carve], tune=src[plan.carve], heldout=src[plan.test])
    elif plan.tune is None:  # tune carved from train
        train, tune = stratified_partition(pools[plan.train], [f], seed, gold_label)
        heldout = test
        carved = f"tune = {f:.0%} of train (stratified, seed {seed})"
        split_sources.update(train=src[plan.train], tune=src[plan.train], heldout=src[plan.test])
    else:
        train, tune, heldout = pools[plan.train], pools[plan.tune], test
        split_sources.update(train=src[plan.train], tune=src[plan.tune], heldout=src[plan.test])
    splits = {
        "train": [replace(e, split="train") for e in train],
        "tune": [replace(e, split="tune") for e in tune],
        "test": test,
        "heldout": heldout,
    }
    return splits, split_sources, carved


def _bigbench_examples(cfg: Config, name: str) -> tuple[list[Example], str, Counter]:
    """All examples of a BIG-bench task (or subtask), its source, and skipped rows."""
    _, task, subtask = parse_task(name)
    tasks_dir = bigbench.bigbench_tasks_dir(cfg)
    examples = []
    skipped: Counter = Counter()
    for part in bigbench.load_task_parts(tasks_dir, task, subtask):
        for row, raw in enumerate(part.examples, start=1):
            fx = bigbench.format_example(part, row, raw, cfg.data.bigbench_format)
            if len(fx.candidates) < 2:
                skipped["fewer than 2 candidates"] += 1
                continue
            examples.append(
                Example(
                    task=name,
                    example_id=f"{name}-{part.subtask or task}-{row}",
                    prompt=fx.prompt,
                    candidates=fx.candidates,
                    gold=fx.gold,
                    split="test",
                    source=str(part.path),
                    text=fx.text,
                    target_delimiter=fx.target_delimiter,
                    label=fx.candidates[fx.gold],
                    scores=fx.scores,
                )
            )
    origin = "mirror" if cfg.data.source != "hub" and cfg.data.bigbench_dir is None else "bigbench"
    if cfg.data.bigbench_dir is None and cfg.data.resolved_hub_fixture_dir() is not None:
        origin = "hub-fixture"
    return examples, f"{origin}:{MIRROR_OR_SDIST[origin]}{task}" + (f"/{subtask}" if subtask else ""), skipped


MIRROR_OR_SDIST = {"mirror": bigbench.MIRROR_TASKS + "/", "bigbench": "benchmark_tasks/",
                   "hub-fixture": bigbench.HUB_FIXTURE_TASKS + "/"}


def _cache_key(cfg: Config, task: str) -> str:
    d = cfg.data
    where = str(d.resolved_data_dir()) if d.source != "hub" else str(d.resolved_hub_fixture_dir() or "hub")
    return json.dumps([task, d.source, where, d.pawsx_eval_split, d.split_seed, d.tune_fraction,
                       str(d.bigbench_dir), d.bigbench_format])


def _build_task_data(cfg: Config, task: str) -> TaskData:
    kind, base, _ = parse_task(task)
    if kind == "bigbench":
        examples, source, skipped = _bigbench_examples(cfg, task)
        plan, pools, sources = SplitPlan("all", carve="all"), {"all": examples}, {"all": source}
        skipped_by_source = {f"{source}: {k}": v for k, v in skipped.items()}
    else:
        plan = split_plan(cfg, base)
        names = sorted({n for n in (plan.test, plan.train, plan.tune, plan.carve) if n})
        if cfg.data.source != "hub":
            mirror = cfg.data.resolved_data_dir()
            if mirror is None:
                raise TaskDataError(f"task {task}: no offline mirror found; set $BRD_DATA_DIR or data.mirror_dir")
            loaded = {n: _mirror_pool(mirror, base, n) for n in names}
        else:
            fixture = cfg.data.resolved_hub_fixture_dir()
            loaded = {n: _hub_pool(base, n, fixture) for n in names}
        pools = {n: _examples_from_pool(base, p) for n, p in loaded.items()}
        sources = {n: p.source for n, p in loaded.items()}
        skipped_by_source = {f"{p.source}: {k}": v for p in loaded.values() for k, v in p.skipped.items()}
    for what, n in skipped_by_source.items():
        log.warning("task %s: skipped %d rows (%s)", task, n, what)
    splits, split_sources, carved = _assemble(task, plan, pools, sources, cfg)
    note = ""
    if base == "pawsx" and cfg.data.source != "hub" and plan.test == "test":
        note = "labels derived from the de/zh test files (mirror MANIFEST); data.pawsx_eval_split=dev: exact labels"
    info = SplitInfo(task, split_sources, {k: len(v) for k, v in splits.items()}, carved, skipped_by_source, note)
    return TaskData(splits, info)


_CACHE: dict[str, TaskData] = {}
_CACHE_SIZE = 32


def task_data(cfg: Config, task: str) -> TaskData:
    """Every split of a task, in full (before subsampling), with its :class:`SplitInfo`.

    Kept in memory for the session, keyed by the data settings that determine it; treat it as read-only.
    """
    parse_task(task)
    key = _cache_key(cfg, task)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _build_task_data(cfg, task)
    return _CACHE[key]


# Public API ----------------------------------------------------------------------------------------------------


def parse_task(name: str) -> tuple[str, str, str | None]:
    """('table9', 'xnli', None) or ('bigbench', '<task>', '<subtask>' | None); unknown names fail clearly."""
    if name in TASKS:
        return "table9", name, None
    if name.startswith("bigbench:"):
        parts = name.split(":")
        if len(parts) in (2, 3) and all(parts[1:]):
            return "bigbench", parts[1], parts[2] if len(parts) == 3 else None
    raise TaskDataError(
        f"unknown task {name!r}; accepted: {', '.join(TABLE9_TASKS)}, bigbench:<task> or bigbench:<task>:<subtask>"
    )


def load_examples(cfg: Config, task: str, split: str = "test") -> list[Example]:
    """A task's examples of one split, subsampled to ``data.max_examples_per_task`` (stratified by gold label).

    ``split`` is ``train``, ``tune``, ``test`` (the evaluation split) or ``heldout`` (the part of test disjoint
    from train and tune; the relaxed and supervised protocols evaluate on it).
    """
    if split not in SPLITS:
        raise TaskDataError(f"unknown split {split!r} for task {task}; accepted: {', '.join(SPLITS)}")
    data = task_data(cfg, task)
    examples = data.splits[split]
    if not examples:
        raise TaskDataError(f"task {task}: split {split!r} is empty (source {data.info.sources.get(split)})")
    return stratified_sample(examples, cfg.data.max_examples_per_task, cfg.data.split_seed, gold_label)


def split_info(cfg: Config, task: str) -> SplitInfo:
    """Sources, full sizes, carving and skipped rows of a task's splits, for table captions."""
    return task_data(cfg, task).info


def bigbench_task_selection(cfg: Config) -> list[str]:
    """Selected BIG-bench tasks available to the profile, a seeded sample of ``data.max_bigbench_tasks``."""
    selected = bigbench.selected_tasks()
    excluded = set(cfg.data.bigbench_exclude)
    unknown = sorted(excluded - set(selected))
    if unknown:
        raise TaskDataError(f"data.bigbench_exclude names {', '.join(unknown)}, not among the selected BIG-bench tasks "
                            f"(configs/bigbench_selection.csv, column 'task' where selected is True)")
    names = [n for n in selected if n not in excluded]
    if cfg.data.source != "hub" or cfg.data.bigbench_dir is not None or cfg.data.hub_fixture_dir is not None:
        tasks_dir = bigbench.bigbench_tasks_dir(cfg)
        missing = [n for n in names if bigbench.task_json_path(tasks_dir / n) is None]
        if missing:
            log.info("BIG-bench: %d selected tasks not in %s: %s", len(missing), tasks_dir, ", ".join(missing))
        names = [n for n in names if n not in missing]
    k = cfg.data.max_bigbench_tasks
    if k is not None and k < len(names):
        names = sorted(random.Random(cfg.data.split_seed).sample(names, k))
    return names


def task_names(cfg: Config) -> list[str]:
    """The profile's tasks, with 'bigbench' expanded into the selected ``bigbench:<task>`` names."""
    out: list[str] = []
    for name in cfg.data.tasks:
        if name == "bigbench":
            out.extend(f"bigbench:{t}" for t in bigbench_task_selection(cfg))
        else:
            parse_task(name)
            out.append(name)
    return out


def reduced_bigbench_tasks() -> list[str]:
    """A.3's reduced set, as task names: the relaxed and supervised protocols' BIG-bench tasks (80/10/10)."""
    return [f"bigbench:{t}" for t in bigbench.REDUCED_SET]


# Summary -------------------------------------------------------------------------------------------------------


def gold_shares(examples: Sequence[Example]) -> dict[str, float]:
    """Share of each gold answer, most common first; keyed by gold position ('#2') when candidate sets vary."""
    fixed = len({e.candidates for e in examples}) == 1
    counts = Counter(gold_label(e)[:24] if fixed else f"#{e.gold + 1}" for e in examples)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.most_common()}


def label_balance(examples: Sequence[Example], top: int = 4) -> str:
    """'Yes 50% / No 30% / Maybe 20%' over gold answers; 'gold at #1 40% / ...' when candidate sets vary."""
    if not examples:
        return ""
    shares = list(gold_shares(examples).items())
    parts = [f"{k} {v:.0%}" for k, v in shares[:top]]
    if len(shares) > top:
        parts.append(f"{len(shares) - top} others {sum(v for _, v in shares[top:]):.0%}")
    return ("gold at " if shares[0][0].startswith("#") else "") + " / ".join(parts)


def data_summary(cfg: Config, tasks: Sequence[str] | None = None, splits: Sequence[str] = SPLITS) -> pd.DataFrame:
    """One row per task and split: n used, n in full, candidates, label balance, source, carving, skipped.

    A ``heldout`` row appears only where it differs from ``test`` (train/tune carved from the evaluation split).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for task in tqdm(list(tasks or task_names(cfg)), desc="tasks"):
        data = task_data(cfg, task)
        for split in splits:
            full = data.splits[split]
            if split == "heldout" and full is data.splits["test"]:
                continue  # the held-out part is the whole test split: nothing new to show
            used = stratified_sample(full, cfg.data.max_examples_per_task, cfg.data.split_seed, gold_label)
            n_cand = sorted({len(e.candidates) for e in full})
            rows.append({
                "task": task,
                "split": split,
                "n": len(used),
                "n_full": len(full),
                "candidates": str(n_cand[0]) if len(n_cand) == 1 else f"{n_cand[0]}-{n_cand[-1]}",
                "label_balance": label_balance(used),
                "source": data.info.sources.get(split, ""),
                "carved": data.info.carved if split in ("train", "tune", "heldout") else "",
                "skipped": sum(data.info.skipped.values()),
                "note": data.info.note if split in ("test", "heldout") else "",
            })
    return pd.DataFrame(rows)


def label_balance_figure(cfg: Config, tasks: Sequence[str] | None = None, split: str = "test") -> Figure:
    """Left: share of each gold answer per task (as used, after subsampling); right: examples used and in full."""
    import matplotlib.pyplot as plt

    names = list(tasks or task_names(cfg))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 1.0 + 0.38 * len(names)), gridspec_kw={"width_ratios": [3, 2]})
    used_n, full_n = [], []
    colours: dict[str, tuple[float, ...]] = {}
    for y, task in enumerate(names):
        full = task_data(cfg, task).splits[split]
        used = stratified_sample(full, cfg.data.max_examples_per_task, cfg.data.split_seed, gold_label)
        used_n.append(len(used))
        full_n.append(len(full))
        left = 0.0
        for label, share in gold_shares(used).items():
            colour = colours.setdefault(label, plt.cm.tab20(len(colours) % 20))
            ax1.barh(y, share, left=left, color=colour, edgecolor="white")
            if share >= 0.12:
                ax1.text(left + share / 2, y, label[:12], ha="center", va="center", fontsize=7)
            left += share
    ticks = range(len(names))
    ax1.set_yticks(ticks, [n.removeprefix("bigbench:") for n in names], fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 1)
    ax1.set_xlabel(f"share of gold answers, {split} split as used (#k: gold at position k)")
    ax2.barh(ticks, full_n, alpha=0.35, label="full split")
    ax2.barh(ticks, used_n, label="used")
    ax2.set_yticks(ticks, [""] * len(names))
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("examples (log scale)")
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Evaluation data of profile {cfg.profile!r}", fontsize=11)
    fig.tight_layout()
    return fig
