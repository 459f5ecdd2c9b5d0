"""The paper's Table 9 tasks as an lm-evaluation-harness task group, generated from :mod:`brdlib.tasks`.

    lm_eval --model hf --model_args pretrained=DIR --include_path lm_eval_tasks --tasks brd_table9 --device cpu

``lm_eval_tasks/brd_table9/`` holds one task per Table 9 task (``brd_xnli``, ``brd_rte``, ``brd_cb``, ``brd_pawsx``,
``brd_boolq``, ``brd_sst2``) and the group ``brd_table9``. Every file there is written by :func:`write_task_files`
(``brd lm-eval-tasks``) from :data:`brdlib.tasks.TASKS`, the one copy of the templates (a test checks that the
shipped files are what it writes):

* ``doc_to_text`` is the task's Table 9 template with each ``{field}`` written ``{{field|trim}}`` (jinja's ``trim``
  is ``str.strip``, as :meth:`brdlib.tasks.TaskSpec.prompt` strips each field), ``doc_to_choice`` its candidates in
  the table's order and ``target_delimiter`` one space, so lm-eval scores ``prompt + " " + candidate`` exactly as brd
  does (:class:`brdlib.tasks.Example`'s scoring contract); zero-shot, as the paper.
* The documents come from brd's own task loader (``custom_dataset`` → :func:`table9_dataset`): the profile's
  evaluation split (XNLI test 5,010, RTE val 277, CB val 56, PAWS-X test 2,000, BoolQ val 3,270, SST-2 val 872), in
  brd's order, with brd's example ids and gold answers, read from the offline mirror (``$BRD_DATA_DIR``, else
  ``../shared/data``; profile ``smoke``, the default) or the hub (profile ``paper``). lm-eval's ``--metadata`` picks
  them: ``{"brd_profile": "paper"}``, ``{"brd_overrides": ["data.pawsx_eval_split=dev"]}``, ``{"brd_subsample":
  true}`` (the profile's stratified ``data.max_examples_per_task``, the examples brd's notebooks score).
* Metrics: lm-eval's ``acc`` (the candidate with the highest *sum* of token log-probabilities, the first on a tie:
  brd's ``eval.rule=sum`` with ``eval.tie_break=first``) and ``acc_norm`` (that sum divided by the candidate's
  length in characters). The paper's rule, the per-token *mean*, is neither (README, "lm-evaluation-harness").
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from brdlib.config import REPO_ROOT, load_config
from brdlib.tasks import SPLITS, TABLE9_TASKS, TASKS, TaskDataError, TaskSpec, load_examples, task_data

__all__ = [
    "DEFAULT_PROFILE", "GROUP", "METADATA_KEYS", "TASKS_DIR", "check_task_files", "harness_docs", "harness_task",
    "jinja_template", "table9_dataset", "task_files", "write_task_files",
]

GROUP = "brd_table9"
"""The lm-eval group of the six Table 9 tasks."""
TASKS_DIR = REPO_ROOT / "lm_eval_tasks" / GROUP
"""Where the task files are shipped (``lm_eval --include_path lm_eval_tasks``)."""
DEFAULT_PROFILE = "smoke"
"""The profile whose data settings the tasks read unless ``--metadata`` names another: the offline mirror."""
METADATA_KEYS = ("brd_profile", "brd_overrides", "brd_split", "brd_subsample")
"""The ``--metadata`` keys :func:`table9_dataset` reads (lm-eval passes the model's arguments too: ignored)."""
_TEMPLATE_FILE = "_default_template_yaml"  # lm-eval's name for shared settings (not indexed as a task)
_HEADER = ("# Written by `brd lm-eval-tasks` (brdlib/harness.py) from brdlib.tasks.TASKS, the paper's Table 9;\n"
           "# do not edit: tests/test_harness.py checks that this folder is what it writes.\n")


def harness_task(task: str) -> str:
    """The lm-eval task name of a Table 9 task (``brd_xnli``)."""
    if task not in TASKS:
        raise TaskDataError(f"unknown Table 9 task {task!r}; accepted: {', '.join(TABLE9_TASKS)}")
    return f"brd_{task}"


def jinja_template(spec: TaskSpec) -> str:
    """The task's Table 9 template as lm-eval's jinja ``doc_to_text``: ``{field}`` → ``{{field|trim}}``."""
    out = []
    for literal, name, format_spec, conversion in string.Formatter().parse(spec.template):
        if "{" in literal or "}" in literal:
            raise ValueError(f"task {spec.name}: template text {literal!r} has a brace, which jinja may read as syntax")
        out.append(literal)
        if name is None:
            continue
        if name not in spec.fields or format_spec or conversion:
            raise ValueError(f"task {spec.name}: placeholder {{{name}}} is not a plain field of {spec.fields}")
        out.append(f"{{{{{name}|trim}}}}")
    return "".join(out)


def _dump(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True, width=1000)


def _template_yaml() -> str:
    """The settings every task shares: brd's loader, zero-shot multiple choice, acc and acc_norm."""
    shared = {
        "output_type": "multiple_choice",
        "test_split": "test",
        "num_fewshot": 0,
        "target_delimiter": " ",
        "doc_to_target": "gold",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }
    return (_HEADER + "# brd's own task loader reads the data (the mirror or the hub; --metadata picks, see utils.py)\n"
            "custom_dataset: !function utils.table9_dataset\n" + _dump(shared))


def _task_yaml(task: str) -> str:
    spec = TASKS[task]
    config = {
        "include": _TEMPLATE_FILE,
        "task": harness_task(task),
        "dataset_kwargs": {"brd_task": task},
        "doc_to_text": jinja_template(spec),
        "doc_to_choice": list(spec.candidates),
    }
    return _HEADER + _dump(config)


def _group_yaml() -> str:
    config = {
        "group": GROUP,
        "task": [harness_task(t) for t in TABLE9_TASKS],
        "aggregate_metric_list": [{"metric": m, "aggregation": "mean", "weight_by_size": False}
                                  for m in ("acc", "acc_norm")],  # the paper averages tasks, not examples
        "metadata": {"version": 1.0},
    }
    return _HEADER + _dump(config)


_UTILS = '''"""The loader the task files name (`custom_dataset: !function utils.table9_dataset`): brd's own.

Written by `brd lm-eval-tasks` (brdlib/harness.py); run lm_eval from the project's environment, where brdlib is
installed. --metadata '{"brd_profile": "paper"}' reads the hub instead of the offline mirror ($BRD_DATA_DIR).
"""

try:
    from brdlib.harness import table9_dataset
except ImportError as err:  # lm_eval from another environment
    raise ImportError(f"the brd_table9 tasks read their data with brdlib ({err}); run lm_eval from the brd project's "
                      "environment (.venv/bin/lm_eval) or `pip install -e .` the project there") from None

__all__ = ["table9_dataset"]
'''


def task_files() -> dict[str, str]:
    """Every file of ``lm_eval_tasks/brd_table9/`` by name, as :func:`write_task_files` writes it."""
    files = {f"{GROUP}.yaml": _group_yaml(), _TEMPLATE_FILE: _template_yaml(), "utils.py": _UTILS}
    files.update({f"{harness_task(t)}.yaml": _task_yaml(t) for t in TABLE9_TASKS})
    return files


def write_task_files(folder: Path | str = TASKS_DIR) -> list[Path]:
    """Write the task group into ``folder`` (default: the repository's ``lm_eval_tasks/brd_table9``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in task_files().items():
        (folder / name).write_text(text, encoding="utf-8")
        written.append(folder / name)
    return written


def check_task_files(folder: Path | str = TASKS_DIR) -> list[str]:
    """Names of the files in ``folder`` that differ from what :func:`write_task_files` writes (or are missing)."""
    folder = Path(folder)
    return [name for name, text in task_files().items()
            if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text]


def harness_docs(task: str, profile: str = DEFAULT_PROFILE, overrides: Sequence[str] | Mapping[str, Any] | None = None,
                 split: str = "test", subsample: bool = False) -> list[dict[str, Any]]:
    """The documents of a Table 9 task for lm-eval: brd's examples of ``split`` (all of it, or with ``subsample`` the
    profile's stratified ``data.max_examples_per_task``), each its template fields as the source gave them, its
    ``example_id``, the source's ``label`` and the ``gold`` candidate index."""
    harness_task(task)
    if split not in SPLITS:
        raise TaskDataError(f"unknown split {split!r} for task {task}; accepted: {', '.join(SPLITS)}")
    cfg = load_config(profile, overrides)
    examples = load_examples(cfg, task, split) if subsample else task_data(cfg, task).splits[split]
    if not examples:
        raise TaskDataError(f"task {task}: split {split!r} of profile {profile!r} has no examples")
    return [{"example_id": ex.example_id, **dict(ex.fields), "label": ex.label, "gold": ex.gold} for ex in examples]


def table9_dataset(brd_task: str, brd_profile: str | None = None,
                   brd_overrides: Sequence[str] | Mapping[str, Any] | None = None, brd_split: str = "test",
                   brd_subsample: bool = False, **_lm_eval_metadata: Any) -> dict[str, Any]:
    """lm-eval's ``custom_dataset`` of the ``brd_<task>`` tasks: ``{"test": Dataset}`` of :func:`harness_docs`.

    lm-eval calls it with the task's ``dataset_kwargs`` (``brd_task``) and the run's metadata: ``--metadata`` (the
    ``brd_*`` keys of :data:`METADATA_KEYS`) and the model's arguments, which are ignored.
    """
    import datasets

    misspelt = sorted(k for k in _lm_eval_metadata if k.startswith("brd_"))
    if misspelt:
        raise TaskDataError(f"unknown metadata {', '.join(misspelt)} for the {GROUP} tasks; accepted: "
                            f"{', '.join(METADATA_KEYS)}")
    if not isinstance(brd_subsample, bool):
        raise TaskDataError(f"brd_subsample {brd_subsample!r} must be a JSON boolean (true or false)")
    docs = harness_docs(brd_task, brd_profile or DEFAULT_PROFILE, brd_overrides, brd_split, brd_subsample)
    return {"test": datasets.Dataset.from_list(docs, split=datasets.Split.TEST)}
