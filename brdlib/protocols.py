"""The relaxed and supervised protocols (paper §4, Tables 3, 4, 8, 10, 11; notebooks 05 and 06).

    from brdlib import protocols
    tasks = protocols.protocol_tasks(cfg)                    # Table 9 tasks + A.3's reduced BIG-bench set
    inputs = protocols.train_inputs(cfg, tasks)              # task -> training Examples (inputs; gold unused)
    pseudo = protocols.pseudo_labels(cfg, inputs)            # the teacher's answers under the scoring rule
    protocols.build_relaxed_data(cfg, inputs, pseudo)        # TaskDistillation texts, BRD2 passages (+ -NER/-QRA)
    chosen = protocols.train_students(cfg, protocols.RELAXED_STUDENTS, tasks)   # tune-selected checkpoints
    preds = evaluate_models(cfg, {"student_base": "student", **protocols.chosen_models(chosen)}, tasks,
                            split=protocols.EVAL_SPLIT, max_examples=cfg.protocols.eval_max_examples)

**Relaxed test** (only the task *inputs* of the training split are available):

- *TaskDistillation*: the teacher scores each training input's candidates with the evaluation rule
  (``eval.rule``; :func:`brdlib.scoring.predict`) and its choice is the pseudo-answer; the base student is
  trained on ``prompt + target_delimiter + pseudo-answer``. The gold answers are only used to report how often
  the pseudo-answers are right.
- *BRD²*: BRD again, on the task inputs: each input becomes a passage whose sentences are its fields' sentences
  (``Example.text`` holds one field per line, e.g. premise then hypothesis; each line is split into sentences with
  the corpus splitter), the teacher runs the Table 1/2 prompts on them, and :mod:`brdlib.assemble` builds D_ORI,
  D_NER and D_QRA exactly as §3.2 does for the corpus; training continues from the ``brd`` student.
  ``-NER``/``-QRA`` (Table 8) leave out D_NER/D_QRA; *FBRD* (Table 11) is the same data from the base student.
  With ``protocols.teacher_sentences_per_input`` the teacher annotates only that many sentences per input (the
  first sentence of each field first), the others stay in the passage without an annotation.
- *TaskDistillation +BRD* (Table 4, §5.1: "further training the student model of task distillation on the basic
  reading data of the downstream tasks"): the same BRD² data, from the tune-selected TaskDistillation student.
  The paper's printed numbers for this row equal its Table 11 FBRD row cell for cell (58.1, 61.0, 71.4, 63.1,
  74.4, 81.1); we train the row as §5.1 defines it and show the paper's numbers as printed.

**Supervised**: *SFT* trains the base student on ``prompt + delimiter + gold answer``; *BRD²-SFT* trains the
``brd`` student on the shuffled mix of the BRD² passages and those SFT texts.

**Splits.** Training inputs are ``load_examples(cfg, task, "train")`` cut to ``protocols.task_train_examples``
(stratified, seeded); checkpoints are chosen on ``tune``; every model is scored on ``heldout``
(:data:`EVAL_SPLIT`), the part of the evaluation split disjoint from train and tune (it is the whole evaluation
split where train/tune come from elsewhere; BoolQ in the mirror and BIG-bench carve 80/10/10 from it, A.3).

**Checkpoint selection** (the paper selects checkpoints on the tune split): a student is saved every
``ceil(steps / protocols.checkpoint_candidates)`` steps; each candidate (the final model included) is scored on
the tune split and the one with the best mean per-task accuracy is kept (ties: the later step). A chosen
intermediate checkpoint is kept as the student ``<name>.step<k>``; optimizer states and the other checkpoints are
deleted afterwards, so changing the tune settings (tasks, ``protocols.tune_max_examples``) re-scores the candidates
still kept (the final model and the checkpoint chosen before).

Every step is idempotent: teacher records, pseudo-labels (score cache), datasets, students and selections are
reused when their inputs are unchanged, and an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib import bigbench
from brdlib import teacher as T
from brdlib.assemble import (
    assemble_all,
    assemble_variant,
    encode_passages,
    load_variant,
    save_variant,
    student_tokenizer,
    token_stats,
)
from brdlib.backends import make_backend
from brdlib.corpus import split_sentences
from brdlib.evaluate import accuracy_table, evaluate_model, load_task_examples, results_table
from brdlib.records import Passage, TeacherItem
from brdlib.report import INTERVAL_NOTE, accuracy_bars, n_label
from brdlib.store import (
    SUMMARY_FILE,
    artefact_dir,
    checkpoints_dir,
    is_trained,
    load_card,
    load_summary,
    passages_dir,
    student_dir,
)
from brdlib.tasks import TABLE9_TASKS, parse_task, reduced_bigbench_tasks, split_info
from brdlib.teacher import teacher_output_dir
from brdlib.train import train_student

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from brdlib.config import Config, TrainRecipe
    from brdlib.records import BehaviourRecord, TeacherItem
    from brdlib.tasks import Example
    from brdlib.teacher import RunStats

__all__ = [
    "BRD2_DATA", "BRD2_NO_NER_DATA", "BRD2_NO_QRA_DATA", "BRD2_SFT_DATA", "BRD2_VARIANTS", "EVAL_SPLIT",
    "PROTOCOLS_FORMAT_VERSION", "RELAXED_STUDENTS", "SFT_DATA", "SUPERVISED_STUDENTS", "TABLE4_BLOCK", "TABLE4_NOTE",
    "TABLE4_ROLES", "TASK_DISTILLATION_DATA", "TUNE_SPLIT", "InputPassage", "ProtocolError", "Selection",
    "StudentPlan", "annotate_inputs", "annotated_indices", "answer_text", "assemble_brd2", "bigbench_task_accuracy",
    "build_brd2_data", "build_relaxed_data", "build_supervised_data", "chosen_models", "data_table",
    "ensure_brd_student", "example_table", "input_passage", "input_passages", "input_records", "load_selection",
    "protocol_data_table", "protocol_figure", "protocol_note", "protocol_tasks", "pseudo_label_table",
    "pseudo_labels", "resolved_plan", "save_rows", "select_checkpoint", "selection_path", "selection_table",
    "sft_rows", "table4_block", "task_distillation_rows", "task_teacher_dir", "teacher_items", "train_inputs",
    "train_selected", "train_students", "training_recipe", "tune_score", "with_steps",
]

log = logging.getLogger(__name__)

PROTOCOLS_FORMAT_VERSION = 1
"""Bump when the protocol texts change, so saved datasets are rebuilt."""
EVAL_SPLIT = "heldout"
"""The split every protocol model is scored on (:mod:`brdlib.tasks`: test minus whatever train/tune came from)."""
TUNE_SPLIT = "tune"

TASK_DISTILLATION_DATA = "relaxed_task_distillation"
BRD2_DATA = "relaxed_brd2"
BRD2_NO_NER_DATA = "relaxed_brd2_no_ner"
BRD2_NO_QRA_DATA = "relaxed_brd2_no_qra"
SFT_DATA = "supervised_sft"
BRD2_SFT_DATA = "supervised_brd2_sft"
BRD2_VARIANTS: dict[str, str] = {BRD2_DATA: "brd", BRD2_NO_NER_DATA: "no_ner", BRD2_NO_QRA_DATA: "no_qra"}
"""Saved dataset name -> brdlib.assemble variant, built on the task-input passages."""


@dataclass(frozen=True)
class StudentPlan:
    """One protocol student: the dataset it trains on and the model it starts from (None: the base student)."""

    data: str
    init: str | None
    what: str


RELAXED_STUDENTS: dict[str, StudentPlan] = {
    "task_distillation": StudentPlan(TASK_DISTILLATION_DATA, None, "base student on prompt + teacher's pseudo-answer"),
    "brd2": StudentPlan(BRD2_DATA, "brd", "brd student on BRD of the task inputs (D_ORI+D_NER+D_QRA)"),
    "brd2_minus_ner": StudentPlan(BRD2_NO_NER_DATA, "brd", "as brd2 without D_NER (Table 8)"),
    "brd2_minus_qra": StudentPlan(BRD2_NO_QRA_DATA, "brd", "as brd2 without D_QRA (Table 8)"),
    "fbrd": StudentPlan(BRD2_DATA, None, "base student on brd2's data (Table 11, A.4)"),
    "task_distillation_brd": StudentPlan(BRD2_DATA, "task_distillation",
                                         "task_distillation student on brd2's data (Table 4 '+BRD', §5.1)"),
}
"""Notebook 05's students, by paper role (brdlib/paper_reference/README.md). An ``init`` naming another plan
starts from that student's tune-selected checkpoint (:func:`train_students`)."""
TABLE4_BLOCK = "XGLM-564M"
"""Table 4's block of the relaxed test (the paper's init model of TaskDistillation)."""
TABLE4_ROLES: tuple[str, str] = ("task_distillation", "task_distillation_brd")
"""Table 4's XGLM-564M rows: TaskDistillation and its "+BRD" (each the paper role of a :data:`RELAXED_STUDENTS`)."""
TABLE4_NOTE = ("+BRD = the TaskDistillation student trained further on the BRD2 data of the task inputs (§5.1); "
               "the paper's printed +BRD numbers equal its Table 11 FBRD row cell for cell")
"""What Table 4's relaxed block shows, for its caption."""
SUPERVISED_STUDENTS: dict[str, StudentPlan] = {
    "sft": StudentPlan(SFT_DATA, None, "base student on prompt + gold answer"),
    "brd2_sft": StudentPlan(BRD2_SFT_DATA, "brd", "brd student on BRD2 passages mixed with the SFT texts"),
}
"""Notebook 06's students, by paper role."""


class ProtocolError(ValueError):
    """A protocol request that cannot run (named, with what is accepted)."""


# Tasks and inputs --------------------------------------------------------------------------------------------


def _bigbench_available(cfg: Config, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(available, missing) BIG-bench task names (``bigbench:<task>``) in the profile's BIG-bench source."""

    if cfg.data.source == "hub" and cfg.data.bigbench_dir is None:
        return list(names), []  # the sdist is fetched on first use and holds every task
    tasks_dir = bigbench.bigbench_tasks_dir(cfg)
    have = [n for n in names if bigbench.task_json_path(tasks_dir / n.split(":")[1]) is not None]
    return have, [n for n in names if n not in have]


def protocol_tasks(cfg: Config) -> list[str]:
    """The tasks of the relaxed and supervised protocols.

    ``protocols.relaxed_tasks`` when set (``bigbench`` there means A.3's reduced set), else the profile's Table 9
    tasks (``data.tasks``) and the reduced BIG-bench set (:func:`brdlib.tasks.reduced_bigbench_tasks`). Reduced
    BIG-bench tasks that the profile's BIG-bench source lacks (the tiny fixture has two of the five) are left out
    with a warning.
    """

    reduced = reduced_bigbench_tasks()
    if cfg.protocols.relaxed_tasks is not None:
        wanted: list[str] = []
        for name in cfg.protocols.relaxed_tasks:
            if name == "bigbench":
                wanted.extend(reduced)
                continue
            try:
                parse_task(name)
            except ValueError as err:
                raise ProtocolError(f"protocols.relaxed_tasks: {err}") from None
            wanted.append(name)
    else:
        wanted = [t for t in cfg.data.tasks if t in TABLE9_TASKS] + reduced
    wanted = list(dict.fromkeys(wanted))
    bb = [t for t in wanted if t.startswith("bigbench:")]
    _, missing = _bigbench_available(cfg, bb)
    if missing:
        log.warning("protocol tasks: %s not in the profile's BIG-bench source; left out", ", ".join(missing))
    out = [t for t in wanted if t not in missing]
    if not out:
        raise ProtocolError(f"no protocol task of profile {cfg.profile!r} is available (wanted: {', '.join(wanted)})")
    return out


def _all(n: int | None) -> int:
    """``max_examples`` meaning 'every example' (evaluate_model would otherwise cut large models' examples)."""
    return n if n is not None else sys.maxsize


def train_inputs(cfg: Config, tasks: Sequence[str] | None = None) -> dict[str, list[Example]]:
    """Each task's training examples: ``load_examples(cfg, task, "train")`` cut to ``protocols.task_train_examples``
    (stratified by gold answer, seeded with ``data.split_seed``). The protocols use only their inputs, except SFT."""

    tasks = list(tasks) if tasks is not None else protocol_tasks(cfg)
    return load_task_examples(cfg, tasks, "train", cfg.protocols.task_train_examples)


def protocol_data_table(cfg: Config, tasks: Sequence[str]) -> pd.DataFrame:
    """Per task: training inputs, tune and held-out examples used (and in full), and how the splits were made."""
    import pandas as pd

    p = cfg.protocols
    rows = []
    for task in tasks:
        info = split_info(cfg, task)
        n = {split: len(load_task_examples(cfg, [task], split, limit)[task])
             for split, limit in [("train", p.task_train_examples), (TUNE_SPLIT, p.tune_max_examples),
                                  (EVAL_SPLIT, p.eval_max_examples)]}
        rows.append({"task": task, "train inputs": n["train"], "train (full)": info.sizes["train"],
                     "tune used": n[TUNE_SPLIT], "tune (full)": info.sizes["tune"],
                     "held-out used": n[EVAL_SPLIT], "held-out (full)": info.sizes["heldout"],
                     "train source": info.sources.get("train", ""), "held-out source": info.sources.get("heldout", ""),
                     "carved": info.carved})
    return pd.DataFrame(rows)


# TaskDistillation: the teacher's pseudo-answers --------------------------------------------------------------


def pseudo_labels(cfg: Config, inputs: Mapping[str, Sequence[Example]], teacher: str = "teacher",
                  progress: bool = True) -> pd.DataFrame:
    """The teacher's answer to every training input, chosen with the evaluation rule (``eval.rule``).

    One row per input (the columns of :func:`brdlib.evaluate.predictions_frame`, ``role`` = ``teacher``) plus
    ``pseudo`` (the chosen candidate's index) and ``pseudo_answer``; ``correct_<rule>`` says whether it is the gold
    answer (reported only, never trained on). Scores are cached, so a re-run scores nothing; the frame is also
    written to ``protocols/pseudo_labels.parquet``.
    """

    tasks = list(inputs)
    n = cfg.protocols.task_train_examples
    frame = evaluate_model(cfg, teacher, "teacher", tasks, "train", max_examples=_all(n), progress=progress)
    expected = {(t, e.example_id) for t, exs in inputs.items() for e in exs}
    got = set(zip(frame["task"], frame["example_id"], strict=True))
    if got != expected:
        raise ProtocolError(f"the teacher scored {len(got)} training inputs but {len(expected)} were asked for; "
                            "the inputs must come from protocols.train_inputs(cfg, tasks)")
    rule = cfg.eval.rule
    frame["pseudo"] = frame[f"pred_{rule}"]
    by_id = {(e.task, e.example_id): e for exs in inputs.values() for e in exs}
    frame["pseudo_answer"] = [by_id[(t, i)].candidates[p]
                              for t, i, p in zip(frame["task"], frame["example_id"], frame["pseudo"], strict=True)]
    out = artefact_dir(cfg, "protocols") / "pseudo_labels.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.drop(columns=["mean_logprobs", "sum_logprobs", "n_tokens"]).to_parquet(out, index=False)
    return frame


def pseudo_label_table(cfg: Config, pseudo: pd.DataFrame) -> pd.DataFrame:
    """Per task: how often the teacher's pseudo-answer is the gold answer (%, 95% bootstrap interval, n), and
    the share of its most frequent pseudo-answer (a teacher that always says 'Yes' shows here)."""

    acc = accuracy_table(cfg, pseudo.assign(role="teacher"))
    top = pseudo.groupby("task", sort=False)["pseudo_answer"].agg(
        lambda s: f"{str(s.value_counts().index[0])[:24]} ({100 * s.value_counts().iloc[0] / len(s):.0f}%)")
    acc["most frequent pseudo-answer"] = acc["task"].map(top).fillna("")
    acc = acc.rename(columns={"value": "pseudo-label accuracy (%)", "ci_low": "95% CI low", "ci_high": "95% CI high"})
    return acc.drop(columns=["role", "n_tasks"]).round(1)


# Training texts ------------------------------------------------------------------------------------------------


def answer_text(example: Example, answer: int) -> str:
    """``prompt + target_delimiter + candidate``: exactly the sequence the scorer reads for that candidate."""
    if not 0 <= answer < len(example.candidates):
        raise ProtocolError(f"example {example.example_id}: answer index {answer} outside its "
                            f"{len(example.candidates)} candidates")
    return example.prompt + example.target_delimiter + example.candidates[answer]


def task_distillation_rows(inputs: Mapping[str, Sequence[Example]], pseudo: pd.DataFrame) -> list[dict[str, Any]]:
    """One training text per input: its prompt and the teacher's pseudo-answer."""
    answers = {(t, i): int(p) for t, i, p in zip(pseudo["task"], pseudo["example_id"], pseudo["pseudo"], strict=True)}
    rows = []
    for task, examples in inputs.items():
        for ex in examples:
            if (task, ex.example_id) not in answers:
                raise ProtocolError(f"no pseudo-label for training input {ex.example_id} of {task}")
            rows.append(_text_row(answer_text(ex, answers[(task, ex.example_id)]), "task_distillation", ex))
    return rows


def sft_rows(inputs: Mapping[str, Sequence[Example]]) -> list[dict[str, Any]]:
    """One training text per input: its prompt and the gold answer (supervised fine-tuning)."""
    return [_text_row(answer_text(ex, ex.gold), "sft", ex) for examples in inputs.values() for ex in examples]


def _text_row(text: str, kind: str, ex: Example) -> dict[str, Any]:
    return {"text": text, "kind": kind, "passage_id": ex.example_id, "doc_id": ex.task, "sentence_index": -1,
            "n_sentences": 0, "n_annotations": 0}


def save_rows(cfg: Config, name: str, rows: Sequence[dict[str, Any]], description: str, *,
              shuffle: bool = True, force: bool = False) -> Path:
    """Save training rows (``text``, ``kind``, ``passage_id``, ``doc_id``, ...) as a dataset that
    :func:`brdlib.train.train_student` loads by ``name``: the format and card of :mod:`brdlib.assemble`'s variants
    (``data/<profile>/passages/<name>``). Rows are shuffled with ``cfg.seed``; an unchanged dataset is reused."""

    if not rows:
        raise ProtocolError(f"dataset {name!r} has no rows: nothing to train on")
    out = passages_dir(cfg, name)
    tokenizer = student_tokenizer(cfg)
    tokenizer_name = f"{type(tokenizer).__name__}:{tokenizer.name_or_path or cfg.models.student}:{len(tokenizer)}"
    full = [{"sentence_index": -1, "n_sentences": 0, "n_annotations": 0, **r} for r in rows]
    digest = hashlib.sha256(json.dumps({"v": PROTOCOLS_FORMAT_VERSION, "seed": cfg.seed, "shuffle": shuffle,
                                        "tok": tokenizer_name}).encode())
    for r in full:
        digest.update(json.dumps([r["text"], r["kind"], r["passage_id"], r["doc_id"]]).encode())
    fingerprint = digest.hexdigest()[:16]
    card_path = out / "card.json"
    if not force and card_path.is_file() and json.loads(card_path.read_text()).get("fingerprint") == fingerprint:
        return out
    if shuffle:
        random.Random(cfg.seed).shuffle(full)
    for r, ids in zip(full, encode_passages(tokenizer, [r["text"] for r in full]), strict=True):
        r["n_tokens"] = len(ids)
    kinds = list(dict.fromkeys(r["kind"] for r in full))
    by_kind = {k: [r["n_tokens"] for r in full if r["kind"] == k] for k in kinds}
    total = sum(r["n_tokens"] for r in full)
    card = {
        "variant": name, "spec": "protocol", "description": description, "unit": "example", "kinds": kinds,
        "fraction": 1.0, "seed": cfg.seed, "tokenizer": tokenizer_name, "fingerprint": fingerprint,
        "format_version": PROTOCOLS_FORMAT_VERSION, "rows": len(full),
        "rows_by_kind": {k: len(v) for k, v in by_kind.items()},
        "rows_by_task": dict(sorted({t: sum(r["doc_id"] == t for r in full) for t in {r["doc_id"] for r in full}}
                                    .items())),
        "source_passages": len({r["passage_id"] for r in full}), "sentences": 0, "annotations_used": {},
        "annotations_absent": {}, "annotations_filtered_sentiment": 0, "units_skipped_no_annotation": {},
        "tokens": token_stats([r["n_tokens"] for r in full]),
        "tokens_by_kind": {k: token_stats(v) for k, v in by_kind.items()},
        "token_share_by_kind": {k: round(sum(v) / total, 4) if total else 0.0 for k, v in by_kind.items()},
    }
    save_variant(full, card, out)
    log.info("protocol dataset %s: %d rows, %d tokens -> %s", name, len(full), total, out)
    return out


# BRD² on task inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputPassage(Passage):
    """A task input as a passage (``passage_id``: the example's id; ``doc_id``: the task), its fields' sentences
    in order."""

    fields: tuple[int, ...] = ()  # which field (line of Example.text) each sentence comes from


def input_passage(example: Example) -> InputPassage:
    """The passage of one task input: each line of ``Example.text`` (one field: premise, hypothesis, ...) split
    into sentences with the corpus splitter (:func:`brdlib.corpus.split_sentences`, pySBD), fields in order."""

    sentences: list[str] = []
    fields: list[int] = []
    for f, line in enumerate(line for line in example.text.split("\n") if line.strip()):
        parts = split_sentences(line)
        sentences.extend(parts)
        fields.extend([f] * len(parts))
    if not sentences:
        raise ProtocolError(f"task input {example.example_id} of {example.task} has no text to read")
    return InputPassage(example.example_id, example.task, tuple(sentences), f"{example.task} training inputs",
                        tuple(fields))


def input_passages(inputs: Mapping[str, Sequence[Example]]) -> list[InputPassage]:
    """Every training input as a passage, task by task."""
    return [input_passage(ex) for examples in inputs.values() for ex in examples]


def annotated_indices(fields: Sequence[int], cap: int | None) -> list[int]:
    """Which sentences the teacher reads when at most ``cap`` per input (None: all): each field's first sentence
    (fields in order), then each field's second, and so on; returned in passage order.

    >>> annotated_indices([0, 0, 0, 1], 2)     # premise of three sentences, a one-sentence hypothesis
    [0, 3]
    """
    if cap is None or cap >= len(fields):
        return list(range(len(fields)))
    rank: list[tuple[int, int, int]] = []
    seen: dict[int, int] = {}
    for i, f in enumerate(fields):
        rank.append((seen.get(f, 0), f, i))
        seen[f] = seen.get(f, 0) + 1
    return sorted(i for _, _, i in sorted(rank)[:cap])


def teacher_items(passages: Sequence[InputPassage], cap: int | None) -> list[TeacherItem]:
    """The sentences the teacher annotates (:func:`annotated_indices` of each passage) as teacher items."""

    return [TeacherItem(p.passage_id, i, p.sentences[i]) for p in passages for i in annotated_indices(p.fields, cap)]


def task_teacher_dir(cfg: Config, teacher_role: str = "teacher") -> Path:
    """Teacher records on task inputs: ``protocols/teacher/<the corpus records' folder name>``, apart from the
    corpus records (same model and decoding, so the same folder name)."""

    return artefact_dir(cfg, "protocols") / "teacher" / teacher_output_dir(cfg, teacher_role).name


def annotate_inputs(cfg: Config, items: Sequence[TeacherItem], teacher_role: str = "teacher",
                    progress: bool = True) -> RunStats:
    """Run the teacher's NER and QRA prompts (``teacher.behaviours``) on ``items``, into :func:`task_teacher_dir`.

    :func:`brdlib.teacher.generate_behaviours` does the work (resumable, one record per sentence and behaviour);
    the model is loaded only when something is missing.
    """

    params = {b: T.decoding_params(cfg, b) for b in cfg.teacher.behaviours}
    out = task_teacher_dir(cfg, teacher_role)
    model = cfg.models.roles()[teacher_role]
    if T._all_done(items, out, model, params, "0/1"):  # noqa: SLF001 - the teacher stage's own completeness check
        return T._stats_from_disk(items, out, model, params, "0/1", progress)  # noqa: SLF001

    backend = make_backend(cfg, teacher_role)
    try:
        return T.generate_behaviours(items, backend, out, params, shard="0/1", progress=progress)
    finally:
        backend.close()


def input_records(cfg: Config, items: Sequence[TeacherItem], teacher_role: str = "teacher") -> list[BehaviourRecord]:
    """The teacher records of exactly ``items`` (records of other inputs in the folder are ignored)."""

    out = task_teacher_dir(cfg, teacher_role)
    model = cfg.models.roles()[teacher_role]
    wanted = {b: {(it.passage_id, it.sentence_index, T.record_key(model, T.get_template(b),
                                                                      T.decoding_params(cfg, b), it.sentence))
                  for it in items} for b in cfg.teacher.behaviours}
    rows = [r for r in T.read_rows(out, cfg.teacher.behaviours)
            if (r["passage_id"], r["sentence_index"], r["key"]) in wanted.get(r["behaviour"], set())]
    return [T.row_to_record(r) for r in rows]


def build_brd2_data(cfg: Config, inputs: Mapping[str, Sequence[Example]], teacher_role: str = "teacher",
                    progress: bool = True) -> dict[str, dict[str, Any]]:
    """BRD² passages of the task inputs: the teacher reads them (:func:`annotate_inputs`, reused when done) and
    :func:`assemble_brd2` builds ``relaxed_brd2`` (variant ``brd``), ``relaxed_brd2_no_ner`` and
    ``relaxed_brd2_no_qra``. Returns their cards by name."""
    passages = input_passages(inputs)
    items = teacher_items(passages, cfg.protocols.teacher_sentences_per_input)
    annotate_inputs(cfg, items, teacher_role, progress)
    return assemble_brd2(cfg, passages, input_records(cfg, items, teacher_role), teacher_role)


def assemble_brd2(cfg: Config, passages: Sequence[InputPassage], records: Sequence[BehaviourRecord],
                  teacher_role: str = "teacher") -> dict[str, dict[str, Any]]:
    """The three BRD² datasets (:data:`BRD2_VARIANTS`) of task-input passages and their teacher records, built by
    :func:`brdlib.assemble.assemble_variant` as for the corpus; their cards by name."""

    tokenizer = student_tokenizer(cfg)
    cards = {}
    for name, variant in BRD2_VARIANTS.items():
        assemble_variant(cfg, variant, passages=passages, behaviours=records, teacher_role=teacher_role, name=name,
                         tokenizer=tokenizer)
        cards[name] = load_card(cfg, name)
    return cards


def build_relaxed_data(cfg: Config, inputs: Mapping[str, Sequence[Example]], pseudo: pd.DataFrame,
                       progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every dataset of notebook 05: TaskDistillation texts and the three BRD² variants; their cards by name."""

    save_rows(cfg, TASK_DISTILLATION_DATA, task_distillation_rows(inputs, pseudo),
              "TaskDistillation: each training input's prompt with the teacher's pseudo-answer")
    return {TASK_DISTILLATION_DATA: load_card(cfg, TASK_DISTILLATION_DATA), **build_brd2_data(cfg, inputs,
                                                                                                progress=progress)}


def build_supervised_data(cfg: Config, inputs: Mapping[str, Sequence[Example]],
                          progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every dataset of notebook 06: SFT texts (gold answers) and BRD²-SFT (BRD² passages mixed with them)."""

    sft = sft_rows(inputs)
    save_rows(cfg, SFT_DATA, sft, "SFT: each training input's prompt with its gold answer")
    build_brd2_data(cfg, inputs, progress=progress)
    brd2 = load_variant(cfg, BRD2_DATA).to_list()
    mixed = [{k: r[k] for k in ("text", "kind", "passage_id", "doc_id", "sentence_index", "n_sentences",
                                "n_annotations")} for r in brd2] + sft
    save_rows(cfg, BRD2_SFT_DATA, mixed, "BRD2-SFT: the BRD2 passages of the task inputs mixed with the SFT texts")
    return {name: load_card(cfg, name) for name in (SFT_DATA, BRD2_SFT_DATA)}


def data_table(cards: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per protocol dataset: rows by kind, tokens, and (BRD²) the teacher's annotations used and absent."""
    import pandas as pd

    rows = []
    for name, c in cards.items():
        rows.append({"dataset": name, "description": c["description"], "rows": c["rows"],
                     "rows by kind": ", ".join(f"{k} {v}" for k, v in c["rows_by_kind"].items()),
                     "tokens": c["tokens"]["tokens"], "mean tokens/row": c["tokens"]["mean"],
                     "max tokens/row": c["tokens"]["max"], "inputs (passages)": c["source_passages"],
                     "sentences": c["sentences"], "annotations used": sum(c["annotations_used"].values()),
                     "sentences without annotation": sum(c["annotations_absent"].values())})
    return pd.DataFrame(rows)


def example_table(cfg: Config, names: Sequence[str], max_chars: int = 400) -> pd.DataFrame:
    """One training text of each kind of each saved dataset (the first in its saved order), cut to ``max_chars``."""
    import pandas as pd

    rows = []
    for name in names:
        seen: set[str] = set()
        for r in load_variant(cfg, name).select_columns(["text", "kind", "doc_id"]):
            if r["kind"] not in seen:
                seen.add(r["kind"])
                text = r["text"] if len(r["text"]) <= max_chars else r["text"][:max_chars] + " ..."
                rows.append({"dataset": name, "kind": r["kind"], "task": r["doc_id"], "text": text})
    return pd.DataFrame(rows)


# Students, with checkpoints selected on the tune split -----------------------------------------------------------


def training_recipe(cfg: Config) -> TrainRecipe:
    """The protocol students' training: recipe ``task``, with a checkpoint every
    ``ceil(steps / protocols.checkpoint_candidates)`` steps, all kept."""
    steps = cfg.recipes.task.max_steps
    return cfg.recipe("task", save_steps=max(1, math.ceil(steps / cfg.protocols.checkpoint_candidates)),
                      save_total_limit=None, keep_checkpoints=True)


def ensure_brd_student(cfg: Config, progress: bool = True) -> Path:
    """The ``brd`` student of notebook 03 (BRD² and BRD²-SFT start from it), trained exactly as there if missing."""

    assemble_all(cfg, ["brd"])
    return train_student(cfg, "brd", "brd", progress=progress)


def select_checkpoint(scores: Mapping[int, float]) -> int:
    """The step with the best tune score; ties go to the later step (the longer-trained model)."""
    if not scores:
        raise ProtocolError("no checkpoint to select from")
    bad = {s: v for s, v in scores.items() if v != v}
    if bad:
        raise ProtocolError(f"tune scores of steps {sorted(bad)} are NaN; cannot select")
    return max(scores, key=lambda step: (scores[step], step))


@dataclass
class Selection:
    """The checkpoints of one protocol student, their tune scores, and the one kept."""

    name: str
    data: str
    init: str
    steps: int
    fingerprint: str  # the final student's training fingerprint
    chosen_step: int
    chosen: str  # student name of the chosen model (``name`` or ``name.step<k>``)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # step, student, tune_score, chosen
    tune: str = ""  # what the tune scores depend on besides the weights (tasks, examples per task, rule)


def selection_path(cfg: Config, name: str) -> Path:
    return artefact_dir(cfg, "protocols") / "selection" / f"{name}.json"


def load_selection(cfg: Config, name: str) -> Selection | None:
    path = selection_path(cfg, name)
    return Selection(**json.loads(path.read_text())) if path.is_file() else None


_CHECKPOINT_SKIP = ("optimizer.pt", "scheduler.pt", "scaler.pt", "training_args.bin")


def _checkpoint_student(cfg: Config, name: str, step: int, ckpt: Path, final_summary: dict[str, Any]) -> str:
    """Keep checkpoint ``ckpt`` (weights and tokenizer, no optimizer) as the student ``<name>.step<step>``."""

    cand = f"{name}.step{step}"
    fp = f"{final_summary['fingerprint']}@{step}"
    if is_trained(cfg, cand) and load_summary(cfg, cand).get("fingerprint") == fp:
        return cand
    out = student_dir(cfg, cand)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in ckpt.iterdir():
        if f.is_file() and f.name not in _CHECKPOINT_SKIP and not f.name.startswith("rng_state"):
            shutil.copy2(f, tmp / f.name)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    history = [h for h in state.get("log_history", []) if "loss" in h]
    summary = {**final_summary, "name": cand, "fingerprint": fp, "steps": step, "selected_from": name,
               "log_history": history, "final_loss": history[-1]["loss"] if history else None}
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return cand


def tune_score(cfg: Config, model: str, role: str, tasks: Sequence[str], progress: bool = True) -> float:
    """Mean over ``tasks`` of the per-task accuracy (%) on the tune split (``protocols.tune_max_examples`` each)."""

    frame = evaluate_model(cfg, model, role, tasks, TUNE_SPLIT, max_examples=_all(cfg.protocols.tune_max_examples),
                           progress=progress)
    acc = accuracy_table(cfg, frame, bigbench_average=False)
    return float(acc["value"].mean())


def train_selected(cfg: Config, name: str, plan: StudentPlan, tasks: Sequence[str],
                   progress: bool = True) -> Selection:
    """Train (or reuse) student ``name`` as ``plan`` says, with :func:`training_recipe`'s checkpoints, score every
    candidate on the tune split, keep the best (:func:`select_checkpoint`); the selection is saved and reused."""

    recipe = training_recipe(cfg)
    train_student(cfg, plan.data, name, plan.init, recipe=recipe, progress=progress)
    summary = load_summary(cfg, name)
    tune = json.dumps([list(tasks), cfg.protocols.tune_max_examples, cfg.eval.rule, cfg.data.split_seed])
    previous = load_selection(cfg, name)
    if (previous is not None and previous.fingerprint == summary["fingerprint"] and previous.tune == tune
            and previous.candidates and (student_dir(cfg, previous.chosen) / "train_summary.json").is_file()):
        return previous

    final_step = int(summary["steps"])
    candidates: dict[int, str] = {final_step: name}
    if previous is not None and previous.fingerprint == summary["fingerprint"]:  # re-scored on another tune set:
        for c in previous.candidates:  # the intermediate checkpoint kept last time is a candidate again
            if c["student"] != name and (student_dir(cfg, c["student"]) / "train_summary.json").is_file():
                candidates[int(c["step"])] = c["student"]
    ckpt_dir = checkpoints_dir(cfg, name)
    if ckpt_dir.is_dir():
        for ckpt in sorted(ckpt_dir.glob("checkpoint-*")):
            step = int(ckpt.name.split("-")[1])
            if step < final_step and (ckpt / "trainer_state.json").is_file():  # complete checkpoints only
                candidates[step] = _checkpoint_student(cfg, name, step, ckpt, summary)
    scores: dict[int, float] = {}
    if len(candidates) > 1:
        for step, student in sorted(candidates.items()):
            scores[step] = tune_score(cfg, student, f"{name}@{step}", tasks, progress)
    chosen_step = select_checkpoint(scores) if scores else final_step
    sel = Selection(name, plan.data, plan.init or "student", recipe.max_steps, summary["fingerprint"], chosen_step,
                    candidates[chosen_step],
                    [{"step": s, "student": candidates[s], "tune_score": scores.get(s), "chosen": s == chosen_step}
                     for s in sorted(candidates)], tune)
    for step, student in candidates.items():  # keep only the chosen intermediate checkpoint
        if step != chosen_step and student != name:
            shutil.rmtree(student_dir(cfg, student), ignore_errors=True)
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # optimizer states: the student is finished
    path = selection_path(cfg, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(sel), indent=1))
    return sel


def resolved_plan(name: str, plan: StudentPlan, plans: Mapping[str, StudentPlan],
                  done: Mapping[str, Selection]) -> StudentPlan:
    """``plan`` with an ``init`` that names another protocol student replaced by that student's tune-selected
    checkpoint (``done[init].chosen``); other inits (None, ``brd``, a model spec) are kept."""
    protocol_students = {**RELAXED_STUDENTS, **SUPERVISED_STUDENTS, **plans}
    if plan.init is None or plan.init not in protocol_students:
        return plan
    if plan.init not in done:
        raise ProtocolError(f"student {name!r} starts from protocol student {plan.init!r}, which must be trained "
                            f"before it in the same call: list {plan.init!r} earlier in the plans "
                            f"(given, in order: {', '.join(plans)})")
    return replace(plan, init=done[plan.init].chosen)


def train_students(cfg: Config, plans: Mapping[str, StudentPlan], tasks: Sequence[str],
                   progress: bool = True) -> dict[str, Selection]:
    """:func:`train_selected` for each plan, in order (the ``brd`` student is trained first where a plan starts from
    it; a plan starting from another plan's student starts from its chosen checkpoint, :func:`resolved_plan`)."""
    if any(p.init == "brd" for p in plans.values()):
        ensure_brd_student(cfg, progress)
    done: dict[str, Selection] = {}
    for name, plan in plans.items():
        done[name] = train_selected(cfg, name, resolved_plan(name, plan, plans, done), tasks, progress)
    return done


def chosen_models(selections: Mapping[str, Selection]) -> dict[str, str]:
    """Role -> the chosen student's name, for :func:`brdlib.evaluate.evaluate_models`."""
    return {name: sel.chosen for name, sel in selections.items()}


def selection_table(selections: Mapping[str, Selection]) -> pd.DataFrame:
    """One row per candidate checkpoint: student, data, init, step, mean tune accuracy, and which one was kept."""
    import pandas as pd

    rows = [{"student": s.name, "data": s.data, "init": s.init, "step": c["step"],
             "tune accuracy (mean over tasks, %)": None if c["tune_score"] is None else round(c["tune_score"], 1),
             "chosen": c["chosen"]} for s in selections.values() for c in s.candidates]
    return pd.DataFrame(rows)


# Tables and figures ------------------------------------------------------------------------------------------------


def protocol_note(cfg: Config) -> str:
    """The protocol sizes for table titles: training inputs, steps, batch, teacher sentences, evaluation split."""
    p, t = cfg.protocols, training_recipe(cfg)
    selection = (f"{p.checkpoint_candidates} checkpoints compared on {TUNE_SPLIT}" if p.checkpoint_candidates > 1
                 else "final checkpoint (no tune selection)")
    return (f"training inputs/task {p.task_train_examples or 'all'}, {t.max_steps} steps "
            f"of {t.batch_size} x {t.max_length} tokens, teacher sentences/input "
            f"{p.teacher_sentences_per_input or 'all'}, {selection}, scored on {EVAL_SPLIT}")


def with_steps(table: pd.DataFrame, selections: Mapping[str, Selection]) -> pd.DataFrame:
    """A results table with the chosen checkpoint's step beside each protocol role ('' for other rows)."""
    out = table.copy()
    out.insert(1, "step (tune-selected)", [str(selections[r].chosen_step) if r in selections else ""
                                           for r in out["role"]])
    return out


def bigbench_task_accuracy(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Accuracies with ``bigbench:<task>`` renamed to ``<task>``, as Table 10's columns are named."""
    out = accuracy.copy()
    out["task"] = out["task"].str.removeprefix("bigbench:")
    return out


def table4_block(cfg: Config, accuracy: pd.DataFrame, selections: Mapping[str, Selection]) -> pd.DataFrame:
    """Table 4's XGLM-564M block beside the paper's: :data:`TABLE4_ROLES`, each row the student of that role
    (``task_distillation_brd``: the TaskDistillation student further trained on the BRD² data, §5.1), with the
    chosen step beside it."""

    missing = [r for r in TABLE4_ROLES if r not in set(accuracy["role"])]
    if missing:
        raise ProtocolError(f"Table 4 needs accuracies of {', '.join(missing)} (train them with RELAXED_STUDENTS); "
                            f"present: {', '.join(sorted(set(accuracy['role'])))}")
    table = results_table(cfg, accuracy, "table4", block=TABLE4_BLOCK, roles=list(TABLE4_ROLES))
    return with_steps(table, selections)


def protocol_figure(cfg: Config, predictions: pd.DataFrame, roles: Sequence[str], title: str = "") -> Figure:
    """Accuracy per task and role on the held-out split: bars with the tables' 95% bootstrap intervals over examples
    (:func:`brdlib.evaluate.accuracy_table`), each task's chance level (1/candidates) and its n."""
    import matplotlib.pyplot as plt

    data = predictions[predictions["role"].isin(list(roles))]
    acc = accuracy_table(cfg, data, bigbench_average=False, table_average=False)
    acc["task"] = acc["task"].str.removeprefix("bigbench:").str.slice(0, 22)
    order = list(dict.fromkeys(acc["task"]))
    shown = [r for r in roles if r in set(acc["role"])]
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.35 * len(order) * max(1, len(roles)))), 4.2))
    accuracy_bars(ax, acc, x="task", hue="role", order=order, hue_order=shown)
    ax.set_xlabel("")
    ax.set_ylabel("accuracy (%)")
    ax.tick_params(axis="x", labelrotation=35)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
        label.set_rotation_mode("anchor")
    ax.legend(fontsize=8, ncol=min(5, len(shown) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.42),
              frameon=False)
    head = title or f"Held-out accuracy per task ({cfg.profile})"
    ax.set_title(textwrap.fill(f"{head}; {n_label(acc['n'].tolist())} per task and role; {INTERVAL_NOTE}", 120),
                 fontsize=9)
    return fig
