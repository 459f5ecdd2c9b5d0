"""BIG-bench multiple-choice JSON tasks: reading, the paper's prompt (A.2), and the task-selection rule.

    brd bigbench select --tasks-dir DIR [--mirror-dir MIRROR]   # rewrite configs/bigbench_selection.csv
    brd bigbench fetch                                          # the bigbench sdist, via pip

**Where the tasks come from.** The offline mirror stages every JSON task whose examples all carry
``target_scores`` (``bigbench_mc/tasks/<task>[/<subtask>]/task.json``, files of 4 MiB or more gzipped as
``task.json.gz``). Users with internet get the same files from the ``bigbench==1.0.0`` sdist on PyPI:
:func:`fetch_bigbench_sdist` downloads it once with pip, checks its sha256 and extracts the ``task.json``
files into the brd cache (``data.bigbench_dir`` points elsewhere).

**The prompt.** A.2: "we follow the general instruct with the task prefix and input as the prompt". We read
"general instruct" as BIG-bench's own zero-shot formatting (``bigbench/api/json_task.py``), which is the
default (``data.bigbench_format: bigbench``)::

    prompt = task_prefix + example_input_prefix + input [+ choice_prefix + choice_prefix.join(choices)]
             + example_output_prefix                 # defaults: "", "\\nQ: ", "\\n  choice: ", "\\nA: "

with the choices appended where the task asks (``append_choices_to_input``, default true) in a seeded
permutation of their sorted order, as BIG-bench does. Each candidate follows the prompt directly (the output
prefix carries the space), exactly as BIG-bench scores ``cond_log_prob(prompt, choice)``. The literal reading,
``data.bigbench_format: prefix_input``, is ``task_prefix + input`` followed by ``" " + candidate``.
Candidates are the ``target_scores`` keys in file order; the gold index is the first key with the highest
score (BIG-bench's rule), and the scores are kept for tasks with several correct answers. Some tasks list the
correct answer first in every example (physics, for one), so a scorer must not break ties toward candidate 0.

**The selection rule** (the paper used 73 tasks and does not list them). Of all JSON tasks whose examples all
carry ``target_scores`` (117 in bigbench 1.0.0), a task is selected when

1. every example has at least two candidates (a real choice);
2. its preferred metric (of every subtask) is ``multiple_choice_grade`` — its authors score it as multiple choice;
3. it is English: no keyword in :data:`NON_ENGLISH_KEYWORDS`, and at least :data:`MIN_ASCII_LETTER_SHARE` of
   the letters in its inputs and candidates are ASCII (catches Hindi, Persian, Kannada tasks without keywords);
4. it is text-only: no ``non-language`` keyword (chess moves, code, colour codes, emoji, SVG paths,
   ASCII-art digits, encoded images);
5. it is not a BIG-bench template (keyword ``example task``).

The rule selects 88 tasks (87 in the mirror, which lacks intersect_geometry for size); the paper's 73 cannot be
recovered — its reduced set (A.3, the five largest of its tasks with over 2k instances) implies that hyperbaton
(50,000 examples) was not among them. ``configs/bigbench_selection.csv`` lists every candidate task with the
rule's verdict and reason.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.config import CONFIG_DIR

if TYPE_CHECKING:
    import pandas as pd

    from brdlib.config import Config

__all__ = [
    "BIGBENCH_SDIST", "BIGBENCH_SDIST_SHA256", "BIGBENCH_VERSION", "DEFAULT_CHOICE_PREFIX", "DEFAULT_INPUT_PREFIX",
    "DEFAULT_OUTPUT_PREFIX", "HUB_FIXTURE_TASKS", "LETTER_SAMPLE", "MIN_ASCII_LETTER_SHARE", "MIRROR_TASKS",
    "NON_ENGLISH_KEYWORDS", "NON_TEXT_KEYWORDS", "REDUCED_SET", "SELECTION_CSV", "TEMPLATE_KEYWORDS",
    "BigBenchError", "FormattedExample", "TaskPart", "assess_task", "bigbench_tasks_dir", "brd_cache_dir",
    "check_example", "fetch_bigbench_sdist", "format_example", "list_json_tasks", "load_task_parts",
    "read_selection", "read_task_json", "selected_tasks", "selection_table", "task_json_path",
]

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_SDIST = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
BIGBENCH_SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
"""sha256 of the PyPI sdist, the same file the offline mirror was staged from."""

MIRROR_TASKS = "bigbench_mc/tasks"
HUB_FIXTURE_TASKS = "bigbench/benchmark_tasks"
"""Where ``data.hub_fixture_dir`` keeps its tasks, in the sdist's ``benchmark_tasks`` layout."""
SELECTION_CSV = CONFIG_DIR / "bigbench_selection.csv"

REDUCED_SET: tuple[str, ...] = (
    "movie_dialog_same_or_different",
    "formal_fallacies_syllogisms_negation",
    "play_dialog_same_or_different",
    "vitaminc_fact_verification",
    "winowhy",
)
"""A.3's reduced set (movie dialogue, formal fallacies, Shakespeare dialogue, VitaminC, WinoWhy), split 80/10/10."""

NON_ENGLISH_KEYWORDS = frozenset({"non-English", "multilingual", "translation", "low-resource language"})
NON_TEXT_KEYWORDS = frozenset({"non-language"})
TEMPLATE_KEYWORDS = frozenset({"example task"})
MIN_ASCII_LETTER_SHARE = 0.95
LETTER_SAMPLE = 1000
"""Examples per (sub)task read for the ASCII-letter share."""

DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "


class BigBenchError(ValueError):
    """A BIG-bench task that cannot be read: unknown task, missing file, or a malformed example (named)."""


@dataclass(frozen=True)
class TaskPart:
    """One task.json: a whole task, or one subtask of it."""

    task: str
    subtask: str | None
    path: Path
    meta: dict[str, Any]  # every key but "examples"
    examples: list[dict[str, Any]]


@dataclass(frozen=True)
class FormattedExample:
    """One BIG-bench example as the scorer sees it."""

    prompt: str
    candidates: tuple[str, ...]
    gold: int
    scores: tuple[float, ...]
    target_delimiter: str
    text: str


# Reading --------------------------------------------------------------------------------------------


def task_json_path(folder: Path) -> Path | None:
    """``folder/task.json``, else ``folder/task.json.gz`` (the mirror gzips large files), else None."""
    for name in ("task.json", "task.json.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_task_json(path: Path, task: str) -> dict[str, Any]:
    """Parse one task.json[.gz], failing with the task and file named."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BigBenchError(f"BIG-bench task {task}: file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise BigBenchError(f"BIG-bench task {task}: file {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise BigBenchError(f"BIG-bench task {task}: file {path} holds a {type(data).__name__}, not an object")
    return data


def list_json_tasks(tasks_dir: Path) -> list[str]:
    """Names of the JSON tasks under a ``benchmark_tasks``-like folder."""
    return sorted(p.name for p in Path(tasks_dir).iterdir() if p.is_dir() and task_json_path(p) is not None)


def load_task_parts(tasks_dir: Path, task: str, subtask: str | None = None) -> list[TaskPart]:
    """The task's subtasks (each its own task.json, BIG-bench's layout), or the task itself if it has none."""
    folder = Path(tasks_dir) / task
    top = task_json_path(folder)
    if top is None:
        known = list_json_tasks(tasks_dir) if Path(tasks_dir).is_dir() else []
        hint = f"; {len(known)} tasks there, e.g. {', '.join(known[:5])}" if known else ""
        raise BigBenchError(f"unknown BIG-bench task {task!r}: no {folder}/task.json[.gz]{hint}")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and task_json_path(p) is not None)
    if subtask is not None:
        names = [p.name for p in subdirs]
        if subtask not in names:
            raise BigBenchError(
                f"BIG-bench task {task} has no subtask {subtask!r}; subtasks: {', '.join(names) or 'none'}"
            )
        subdirs = [folder / subtask]
    targets = [(p.name, task_json_path(p)) for p in subdirs] if subdirs else [(None, top)]
    parts = []
    for name, path in targets:
        assert path is not None
        data = read_task_json(path, task)
        examples = data.get("examples", [])
        if not isinstance(examples, list):
            raise BigBenchError(f"BIG-bench task {task}: file {path}: 'examples' is not a list")
        meta = {k: v for k, v in data.items() if k != "examples"}
        parts.append(TaskPart(task, name, path, meta, examples))
    return parts


def check_example(part: TaskPart, row: int, example: Any) -> dict[str, float]:
    """The example's ``target_scores`` as floats, or a BigBenchError naming task, file and row (1-based)."""
    where = f"BIG-bench task {part.task}: file {part.path}, example {row}"
    if not isinstance(example, dict) or not isinstance(example.get("input"), str):
        raise BigBenchError(f"{where}: not an object with a string 'input'")
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or not scores:
        raise BigBenchError(f"{where}: 'target_scores' is missing or empty (not a multiple-choice example)")
    try:
        return {str(k): float(v) for k, v in scores.items()}
    except (TypeError, ValueError):
        raise BigBenchError(f"{where}: 'target_scores' values must be numbers, got {scores!r}") from None


# Formatting -----------------------------------------------------------------------------------------


def format_example(part: TaskPart, row: int, example: dict[str, Any], fmt: str = "bigbench") -> FormattedExample:
    """Prompt, candidates and gold of one example (module docstring: A.2 and BIG-bench's format)."""
    scores = check_example(part, row, example)
    candidates = tuple(scores)
    best = max(scores.values())
    gold = next(i for i, c in enumerate(candidates) if scores[c] == best)
    meta = part.meta
    task_prefix = str(meta.get("task_prefix", ""))
    text = example["input"]
    if fmt == "prefix_input":
        prompt, delimiter = task_prefix + text, " "
    elif fmt == "bigbench":
        body = text
        if meta.get("append_choices_to_input", True):
            choice_prefix = str(meta.get("choice_prefix", DEFAULT_CHOICE_PREFIX))
            order = sorted(candidates)
            random.Random(f"{part.task}/{part.subtask}/{row}").shuffle(order)
            body = body + choice_prefix + choice_prefix.join(order)
        prompt = (
            task_prefix
            + str(meta.get("example_input_prefix", DEFAULT_INPUT_PREFIX))
            + body
            + str(meta.get("example_output_prefix", DEFAULT_OUTPUT_PREFIX))
        )
        delimiter = ""
    else:
        raise BigBenchError(f"unknown BIG-bench prompt format {fmt!r}; accepted: bigbench, prefix_input")
    return FormattedExample(prompt, candidates, gold, tuple(scores.values()), delimiter, text)


# The selection rule -----------------------------------------------------------------------------------


def _ascii_letter_share(parts: list[TaskPart]) -> float:
    letters = ascii_letters = 0
    for part in parts:
        for ex in part.examples[:LETTER_SAMPLE]:
            text = str(ex.get("input", "")) + " " + " ".join(map(str, ex.get("target_scores", {}) or {}))
            for ch in text:
                if ch.isalpha():
                    letters += 1
                    ascii_letters += ch.isascii()
    return ascii_letters / letters if letters else 1.0


def assess_task(tasks_dir: Path, task: str) -> dict[str, Any] | None:
    """One row of the selection table, or None when not every example carries target_scores."""
    parts = load_task_parts(tasks_dir, task)
    examples = [ex for p in parts for ex in p.examples]
    if not examples or not all(isinstance(ex, dict) and "target_scores" in ex for ex in examples):
        return None
    top = read_task_json(task_json_path(Path(tasks_dir) / task), task) if parts[0].subtask else parts[0].meta
    keywords = set(top.get("keywords", []))
    for p in parts:
        keywords |= set(p.meta.get("keywords", []))
    preferred = sorted({str(p.meta.get("preferred_score")) for p in parts})
    n_candidates = [len(ex["target_scores"]) for ex in examples]
    share = _ascii_letter_share(parts)
    reasons = []
    if min(n_candidates) < 2:
        reasons.append("some examples have fewer than 2 candidates")
    if preferred != ["multiple_choice_grade"]:
        reasons.append(f"preferred score {'/'.join(preferred)}")
    if keywords & NON_ENGLISH_KEYWORDS:
        reasons.append(f"keyword {', '.join(sorted(keywords & NON_ENGLISH_KEYWORDS))}")
    if share < MIN_ASCII_LETTER_SHARE:
        reasons.append(f"ASCII letter share {share:.2f}")
    if keywords & NON_TEXT_KEYWORDS:
        reasons.append("keyword non-language")
    if keywords & TEMPLATE_KEYWORDS:
        reasons.append("BIG-bench template task")
    return {
        "task": task,
        "selected": not reasons,
        "reason": "; ".join(reasons) or "selected",
        "n_examples": len(examples),
        "n_subtasks": sum(p.subtask is not None for p in parts),
        "min_candidates": min(n_candidates),
        "max_candidates": max(n_candidates),
        "preferred_score": "/".join(preferred),
        "ascii_letter_share": round(share, 3),
        "reduced_set": task in REDUCED_SET,
        "keywords": "; ".join(sorted(keywords)),
    }


def selection_table(tasks_dir: Path, mirror_tasks_dir: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """The rule applied to every multiple-choice JSON task under ``tasks_dir`` (and whether the mirror has it)."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for task in tqdm(list_json_tasks(tasks_dir), desc="BIG-bench tasks", disable=not progress):
        row = assess_task(tasks_dir, task)
        if row is not None:
            if mirror_tasks_dir is not None:
                row["in_mirror"] = task_json_path(Path(mirror_tasks_dir) / task) is not None
            rows.append(row)
    return pd.DataFrame(rows)


def read_selection(path: Path = SELECTION_CSV) -> pd.DataFrame:
    """The committed selection table (``configs/bigbench_selection.csv``)."""
    import pandas as pd

    if not Path(path).is_file():
        raise BigBenchError(
            f"BIG-bench selection file {path} is missing; write it with `brd bigbench select`"
        )
    return pd.read_csv(path, keep_default_na=False)


def selected_tasks(path: Path = SELECTION_CSV) -> list[str]:
    """Names of the tasks the rule selects, alphabetically."""
    table = read_selection(path)
    return sorted(table.loc[table["selected"].astype(str) == "True", "task"])


# Where the task files are ----------------------------------------------------------------------------


def brd_cache_dir() -> Path:
    """brd's cache (``$BRD_CACHE_DIR``, else ``~/.cache/brd``), as brdlib.embedded uses."""
    return Path(os.environ.get("BRD_CACHE_DIR", Path.home() / ".cache" / "brd")).expanduser()


def fetch_bigbench_sdist(cache_dir: Path | None = None) -> Path:
    """Download ``bigbench==1.0.0``'s sdist with pip (once), check its sha256, extract its task.json files.

    Returns the extracted ``benchmark_tasks`` folder. Only the JSON task files are extracted (1.7 GB).
    """
    root = (cache_dir or brd_cache_dir()) / f"bigbench-{BIGBENCH_VERSION}"
    tasks_dir = root / "benchmark_tasks"
    done = root / ".extracted"
    if done.is_file():
        return tasks_dir
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / BIGBENCH_SDIST
    if not sdist.is_file():
        cmd = [sys.executable, "-m", "pip", "download", f"bigbench=={BIGBENCH_VERSION}", "--no-deps",
               "--no-binary", ":all:", "--no-build-isolation", "-d", str(root)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not sdist.is_file():
            raise BigBenchError(
                f"could not download the bigbench sdist with `{' '.join(cmd)}`:\n{result.stderr[-2000:]}"
            )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != BIGBENCH_SDIST_SHA256:
        raise BigBenchError(
            f"{sdist}: sha256 {digest} is not the expected {BIGBENCH_SDIST_SHA256}; delete it and retry"
        )
    with tarfile.open(sdist, "r:gz") as tf:
        for member in tf:
            if member.isfile() and member.name.endswith("/task.json") and "/benchmark_tasks/" in member.name:
                rel = member.name.split("/benchmark_tasks/", 1)[1]
                out = tasks_dir / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                extracted = tf.extractfile(member)
                assert extracted is not None
                out.write_bytes(extracted.read())
    done.write_text(digest)
    return tasks_dir


def bigbench_tasks_dir(cfg: Config, fetch: bool = True) -> Path:
    """The folder of BIG-bench tasks for the profile: ``data.bigbench_dir``, the hub fixtures', the mirror's, or the
    sdist's."""
    if cfg.data.bigbench_dir is not None:
        return Path(cfg.data.bigbench_dir).expanduser()
    fixture = cfg.data.resolved_hub_fixture_dir()
    if fixture is not None:  # the rehearsal: a few tasks in the sdist's layout stand in for it
        return fixture / HUB_FIXTURE_TASKS
    if cfg.data.source != "hub":
        mirror = cfg.data.resolved_data_dir()
        if mirror is None:
            raise BigBenchError("BIG-bench tasks are read from the offline mirror, and none was found: "
                                "set $BRD_DATA_DIR or data.mirror_dir, or data.bigbench_dir")
        return mirror / MIRROR_TASKS
    if not fetch:
        return brd_cache_dir() / f"bigbench-{BIGBENCH_VERSION}" / "benchmark_tasks"
    return fetch_bigbench_sdist()
