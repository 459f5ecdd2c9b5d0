"""The blind test (paper §4, notebook 04): which students to train, which models to score, and the tables and
figures of Table 3 (top and middle), Figure 3, Tables 4 (KD part), 6, 7 and 12.

    from brdlib.blind import blind_models, train_blind_students
    train_blind_students(cfg)                         # brd, further (as notebook 03) and the ablation students
    preds = evaluate_models(cfg, blind_models(cfg))   # role -> model reference

Student names are the paper_reference role names where one student is one paper row (``brd``, ``further``,
``brd_minus_sentdata``, ``brd_sentence_level``, ``skd_brd``, ``minillm_brd``). The two students of Table 6 are
trained on a subset of the corpus, so they are *not* notebook 03's ``brd``: they are saved and scored as
``brd_subset_<teacher role>`` and mapped to the paper's roles (``brd``, ``brd_second_teacher``) only when Table 6
is built (:func:`table6_accuracy`).
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.assemble import assemble_all, assemble_variant, teacher_behaviours
from brdlib.corpus import load_passages
from brdlib.evaluate import accuracy_table, evaluate_models, paired_difference
from brdlib.kd import ensure_kd_students
from brdlib.report import CHANCE_GID, INTERVAL_NOTE, n_label, paper_table
from brdlib.store import ensure, load_card, load_summary, student_dir
from brdlib.tasks import task_names
from brdlib.train import NAMED_STUDENTS, train_student

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from brdlib.config import Config

__all__ = [
    "ABLATION_STUDENTS", "BLIND_ROLES", "KD_BASE_ROLE", "KD_ROLES", "MAIN_STUDENTS", "PAPER_EXTRA_ROLES",
    "TABLE3_ROLES", "TABLE4_BLOCK", "BlindError", "bigbench_claims", "bigbench_figure", "bigbench_per_task",
    "blind_models", "ensure_students", "evaluate_blind", "extra_roles", "kd_brd_student_name", "kd_models",
    "kd_students", "main_tasks", "sign_test", "subset_passages", "subset_student_name", "subset_summary",
    "table6_accuracy", "train_blind_students", "train_kd_brd_students", "train_two_teacher_students",
]

log = logging.getLogger(__name__)

MAIN_STUDENTS: tuple[str, ...] = ("brd", "further")
"""Notebook 03's students (``brdlib.train.NAMED_STUDENTS``); trained here exactly as there, so they are reused."""
ABLATION_STUDENTS: tuple[str, ...] = ("brd_minus_sentdata", "brd_sentence_level")
"""Table 12 (-SentData, A.6) and Table 7 (SentenceLevel): names (= paper roles) of ``brdlib.train.NAMED_STUDENTS``."""
PAPER_EXTRA_ROLES: tuple[str, ...] = ("second_teacher", "large_baseline")
"""Roles of ``models.extra`` that the paper's blind tables have rows for (Table 6, Table 3)."""
KD_ROLES: tuple[str, ...] = ("skd", "minillm")
KD_BASE_ROLE = "kd_student_base"
"""Our row for the KD students' own initial model (``kd.student``): the paper's Table 4 blocks are these models."""
TABLE4_BLOCK = "GPT-2 760M"
"""The paper's Table 4 block our KD rows are set beside: the KD students its Table 3 uses."""
TABLE3_ROLES: tuple[str, ...] = ("teacher", "large_baseline", "student_base", "further", "skd", "minillm", "brd")
"""Table 3's blind rows, in the paper's order: the only roles with a BIG-bench column (Table 3, Figure 3). Every
other blind table (4, 6, 7, 12) shows the six Table 9 tasks, so its other rows are scored on those alone."""


BLIND_ROLES: dict[str, str] = {"student_base": "student", "brd": "brd"}
"""The two models the analyses compare (notebooks 07, 08): row -> model reference (the student before and after
BRD)."""


class BlindError(ValueError):
    """A blind-test request that cannot run (named, with what is accepted)."""


# Which models ---------------------------------------------------------------------------------------------------


def extra_roles(cfg: Config) -> dict[str, str]:
    """The profile's ``models.extra`` roles that the paper's blind tables know (second teacher, 7.5B baseline)."""
    return {role: role for role in cfg.models.extra if role in PAPER_EXTRA_ROLES}


def blind_models(cfg: Config) -> dict[str, str]:
    """Table 3's models of the profile, paper role -> model reference: the teacher, the student before BRD
    (``student_base``), after BRD (``brd``), FURTHER, and every known extra role."""
    return {"teacher": "teacher", "student_base": "student", "brd": "brd", "further": "further", **extra_roles(cfg)}


def main_tasks(cfg: Config) -> list[str]:
    """The profile's tasks without BIG-bench: the columns of Tables 4, 6, 7 and 12."""

    return [t for t in task_names(cfg) if not t.startswith("bigbench:")]


def evaluate_blind(cfg: Config, models: Mapping[str, str], progress: bool = True) -> pd.DataFrame:
    """Score ``models`` (role -> model reference) on the blind test: :data:`TABLE3_ROLES` on every task of the
    profile, the other roles (second teacher, ablation, KD '+BRD' and Table 6 students) on :func:`main_tasks` only,
    as no table shows them on BIG-bench (on smoke that saves about a third of their scoring time)."""
    import pandas as pd

    full = {r: m for r, m in models.items() if r in TABLE3_ROLES}
    main = {r: m for r, m in models.items() if r not in TABLE3_ROLES}
    tasks = main_tasks(cfg)
    if main and not tasks:
        raise BlindError(f"roles {', '.join(main)} are scored on the six Table 9 tasks, but the profile's tasks are "
                         f"{cfg.data.tasks}; add some of xnli, rte, cb, pawsx, boolq, sst2 to data.tasks")
    frames = [evaluate_models(cfg, full, progress=progress)] if full else []
    if main:
        frames.append(evaluate_models(cfg, main, tasks, progress=progress))
    if not frames:
        raise BlindError("no models to score")
    return pd.concat(frames, ignore_index=True)


def ensure_students(cfg: Config, refs: Mapping[str, str] = BLIND_ROLES, progress: bool = True) -> dict[str, str]:
    """Train (or reuse) every referenced named student (:data:`brdlib.train.NAMED_STUDENTS`, e.g. ``brd``) through
    :func:`brdlib.store.ensure`, so a notebook runs on its own on a fresh output root. Returns ``refs`` unchanged."""
    ensure(cfg, *[f"students/{ref}" for ref in refs.values() if ref in NAMED_STUDENTS], progress=progress)
    return dict(refs)


def train_blind_students(cfg: Config, ablations: bool = True, progress: bool = True) -> dict[str, Path]:
    """Train (or reuse) ``brd`` and ``further`` exactly as notebook 03 does, and with ``ablations`` the Table 12
    and Table 7 students (recipe ``ablation``), through :func:`brdlib.store.ensure`: their passages (and the teacher
    stage) first where missing. Returns name -> student directory."""
    names = [*MAIN_STUDENTS, *(ABLATION_STUDENTS if ablations else ())]
    ensure(cfg, *[f"students/{name}" for name in names], progress=progress)
    return {name: student_dir(cfg, name) for name in names}


# Table 6: two teachers on a subset ------------------------------------------------------------------------------


def subset_passages(passages: Sequence[Any], n_sentences: int | None) -> list[Any]:
    """Whole passages in corpus order until they hold at least ``n_sentences`` sentences (None: all of them)."""
    if n_sentences is None:
        return list(passages)
    if n_sentences <= 0:
        raise BlindError(f"n_sentences must be positive or None, got {n_sentences}")
    chosen, total = [], 0
    for p in passages:
        if total >= n_sentences:
            break
        chosen.append(p)
        total += len(p.sentences)
    return chosen


def subset_student_name(teacher_role: str) -> str:
    """Name (and scoring role) of the Table 6 student taught by ``teacher_role`` on the subset."""
    return f"brd_subset_{teacher_role}"


def train_two_teacher_students(cfg: Config, teacher_roles: Sequence[str] = ("teacher", "second_teacher"),
                               progress: bool = True) -> dict[str, str]:
    """Table 6 (§5.3): annotate the first ``protocols.second_teacher_sentences`` corpus sentences (whole passages)
    with each teacher (resumable; the first teacher's records come from stage 01), assemble the ``brd`` variant on
    that subset per teacher, and train one student on each with recipe ``ablation`` (same subset, same
    steps). Returns teacher role -> student name."""

    roles = cfg.models.roles()
    unknown = [r for r in teacher_roles if r not in roles]
    if unknown:
        raise BlindError(f"teacher roles {unknown} are not models of profile {cfg.profile!r}; "
                         f"roles: {', '.join(roles)}")
    passages = subset_passages(load_passages(cfg, progress=progress), cfg.protocols.second_teacher_sentences)
    out = {}
    for role in teacher_roles:
        behaviours = teacher_behaviours(cfg, passages, role)
        name = subset_student_name(role)
        assemble_variant(cfg, "brd", passages=passages, behaviours=behaviours, teacher_role=role, name=name)
        train_student(cfg, name, name, recipe="ablation", progress=progress)
        out[role] = name
    return out


def subset_summary(cfg: Config, students: Mapping[str, str]) -> pd.DataFrame:
    """What each Table 6 student was trained on: teacher, passages, sentences, rows and tokens of its variant."""
    import pandas as pd

    rows = []
    for role, name in students.items():
        card, summary = load_card(cfg, name), load_summary(cfg, name)
        rows.append({"student": name, "teacher role": role, "teacher model": cfg.models.roles()[role],
                     "passages": card["source_passages"], "sentences": card["sentences"],
                     "annotations used": sum(card["annotations_used"].values()), "rows": card["rows"],
                     "tokens": card["tokens"]["tokens"], "steps": summary["steps"],
                     "final loss": summary["final_loss"]})
    return pd.DataFrame(rows)


def table6_accuracy(accuracy: pd.DataFrame, students: Mapping[str, str]) -> pd.DataFrame:
    """Accuracies for Table 6: the subset students renamed to the paper's roles (first teacher -> ``brd``, second ->
    ``brd_second_teacher``), with the ``teacher``, ``second_teacher`` and ``student_base`` rows."""
    rename = {students["teacher"]: "brd"}
    if "second_teacher" in students:
        rename[students["second_teacher"]] = "brd_second_teacher"
    keep = ["teacher", "second_teacher", "student_base", *rename]
    out = accuracy[accuracy["role"].isin(keep)].copy()
    out["role"] = out["role"].replace(rename)
    return out.reset_index(drop=True)


# KD baselines (Table 3 middle block, Table 4) -------------------------------------------------------------------


def kd_students(cfg: Config) -> dict[str, str]:
    """``brdlib.kd.ensure_kd_students(cfg)``: roles ``skd``, ``minillm`` -> model references, checked."""

    refs = dict(ensure_kd_students(cfg))
    missing = [r for r in KD_ROLES if r not in refs]
    if missing:
        raise BlindError(f"brdlib.kd.ensure_kd_students returned {sorted(refs)}; expected the roles {list(KD_ROLES)}")
    return {r: refs[r] for r in KD_ROLES}


def kd_brd_student_name(kd_role: str) -> str:
    """Table 4's '+BRD' student on top of a KD student: ``skd_brd``, ``minillm_brd`` (the paper's roles)."""
    return f"{kd_role}_brd"


def train_kd_brd_students(cfg: Config, kd_refs: Mapping[str, str], progress: bool = True) -> dict[str, str]:
    """'+BRD' (§5.1): continue training each KD student on D_TRAIN (variant ``brd``) with recipe ``kd_brd`` (the KD
    students are ~4x the student's size; smoke trains them smaller, with Adafactor, so that weights, gradients and
    optimizer state fit 8 GB). Returns role (``skd_brd``, ...) -> student name."""

    assemble_all(cfg, ["brd"])
    out = {}
    for role, ref in kd_refs.items():
        name = kd_brd_student_name(role)
        train_student(cfg, "brd", name, init=ref, recipe="kd_brd", progress=progress)
        out[name] = name
    return out


def kd_models(cfg: Config, kd_refs: Mapping[str, str], brd_students: Mapping[str, str]) -> dict[str, str]:
    """Role -> model reference of Table 4's KD part: the KD students, their '+BRD' students and, when the profile
    trains its own KD students, their init model ``kd.student`` (released KD checkpoints start from a model the
    profile does not name, so that row is left out)."""
    base = {} if getattr(cfg.kd, "released", None) else {KD_BASE_ROLE: cfg.kd.student}
    return {**kd_refs, **brd_students, **base}


# Figure 3: per-task BIG-bench -----------------------------------------------------------------------------------


def bigbench_per_task(cfg: Config, predictions: pd.DataFrame, role: str = "brd",
                      baseline: str = "student_base") -> pd.DataFrame:
    """Figure 3's data: per BIG-bench task, ``role`` and ``baseline`` accuracy on the same examples, their paired
    difference with a 95% bootstrap interval, and the outcome (better/tied/worse); sorted by the difference."""

    bb = predictions[predictions["task"].str.startswith("bigbench:")]
    if bb.empty:
        raise BlindError(f"no BIG-bench predictions for {role!r}/{baseline!r}; the profile's tasks: {cfg.data.tasks}")
    diff = paired_difference(cfg, bb, role, baseline)
    keys = ["task", "example_id"]
    both = bb[bb["role"] == role][keys].merge(bb[bb["role"] == baseline][keys], on=keys)
    paired = bb.merge(both, on=keys)[lambda d: d["role"].isin([role, baseline])]
    acc = accuracy_table(cfg, paired, bigbench_average=False, table_average=False).set_index(["role", "task"])
    for who in (role, baseline):
        for bound in ("ci_low", "ci_high"):
            diff[f"{who} {bound}"] = [acc[bound].get((who, t), float("nan")) for t in diff["task"]]
    diff["chance"] = [acc["chance"].get((role, t), float("nan")) for t in diff["task"]]
    diff["task"] = diff["task"].str.removeprefix("bigbench:")
    return diff.sort_values(["delta", "task"], ascending=[False, True], kind="stable").reset_index(drop=True)


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test p-value over tasks (ties left out); hand-written to avoid a scipy dependency."""
    n = better + worse
    if n == 0:
        return float("nan")
    k = min(better, worse)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bigbench_claims(per_task: pd.DataFrame) -> pd.DataFrame:
    """Our counts beside the paper's words about Figure 3 (``figure_claims.csv``): tasks compared, ties, and the
    share of tasks BRD improves (of all tasks, and of the non-tied ones), with a sign test over tasks."""
    import pandas as pd

    claims = paper_table("figure_claims").set_index("quantity")
    counts = per_task["outcome"].value_counts()
    better, worse, tied = (int(counts.get(k, 0)) for k in ("better", "worse", "tied"))
    n = len(per_task)

    def paper(quantity: str) -> float:
        return float(claims.loc[quantity, "value"])

    rows = [
        ("BIG-bench tasks compared", n, paper("bigbench_tasks_compared")),
        ("tied tasks (same accuracy)", tied, paper("tied_tasks_not_shown")),
        ("tasks BRD improves", better, float("nan")),
        ("tasks BRD worsens", worse, float("nan")),
        ("share improved, of all tasks", round(better / n, 3) if n else float("nan"),
         paper("share_of_tasks_improved_by_brd")),
        ("share improved, of non-tied tasks", round(better / (better + worse), 3) if better + worse else float("nan"),
         float("nan")),
        ("sign test p (better vs worse, two-sided)", round(sign_test(better, worse), 4), float("nan")),
    ]
    return pd.DataFrame(rows, columns=["quantity", "ours", "paper (A.3, about)"])


def bigbench_figure(per_task: pd.DataFrame, role: str = "brd", baseline: str = "student_base",
                    title: str = "") -> Figure:
    """Figure 3 as paired dots per BIG-bench task: ``baseline`` and ``role`` accuracy, each with its 95% interval
    where ``per_task`` has it (:func:`bigbench_per_task`), joined by a line coloured by the outcome
    (better/worse/tied), the task's chance level (1/candidates) as a dashed tick, tasks sorted by the difference;
    the title counts the tasks improved, each label gives the task's n."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    palette = sns.color_palette("colorblind")
    colours = {"better": palette[2], "tied": (0.6, 0.6, 0.6), "worse": palette[3]}
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.36 * len(per_task)))
    ys = np.arange(len(per_task), dtype=float)
    for y, (a, b, outcome) in enumerate(zip(per_task[role], per_task[baseline], per_task["outcome"], strict=True)):
        ax.plot([b, a], [y + 0.15, y - 0.15], color=colours[outcome], lw=2, zorder=1)
    for who, shift, style in ((baseline, 0.15, {"marker": "o", "mfc": "white", "mec": "black"}),
                              (role, -0.15, {"marker": "D", "mfc": "black", "mec": "black"})):
        err = None
        if f"{who} ci_low" in per_task.columns:
            err = np.nan_to_num(np.vstack([per_task[who] - per_task[f"{who} ci_low"],
                                           per_task[f"{who} ci_high"] - per_task[who]]))
        ax.errorbar(per_task[who], ys + shift, xerr=err, fmt="none", ecolor="black", elinewidth=0.8, capsize=2,
                    zorder=2)
        ax.plot(per_task[who], ys + shift, ls="none", color="black", zorder=3, label=who, **style)
    if "chance" in per_task.columns and per_task["chance"].notna().any():
        ax.vlines(per_task["chance"], ys - 0.4, ys + 0.4, colors="black", linestyles="--", lw=1, gid=CHANCE_GID,
                  label="chance")
    for outcome, colour in colours.items():
        ax.plot([], [], color=colour, lw=2, label=f"{outcome} ({int((per_task['outcome'] == outcome).sum())})")
    labels = [f"{t} (n={n})" for t, n in zip(per_task["task"], per_task["n"], strict=True)]
    ax.set_yticks(range(len(per_task)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    better = int((per_task["outcome"] == "better").sum())
    head = title or f"BIG-bench per task: {role} vs {baseline}; {role} better on {better} of {len(per_task)}"
    ax.set_title(textwrap.fill(f"{head}; {n_label(per_task['n'].tolist())} per task; {INTERVAL_NOTE}", 90),
                 fontsize=9)
    return fig
