"""Notebook 10: every table and figure of the paper, gathered from the earlier notebooks' outputs, beside the
paper's, with how far each agrees.

The earlier notebooks write their numbers once, tidy, with :func:`brdlib.results.save_results`
(``figures/<profile>/results/<notebook>.csv``, one row per number: artefact, test, role, task, metric, value...);
their wide side-by-side display tables are views for reading, and nothing here parses them. :data:`ARTEFACTS` says
which paper table or figure each artefact is and which display files show it; :func:`artefact_index` lists what
this profile's run produced; :func:`load_ours` reads an artefact's tidy rows; :func:`claim_checks` compares, for
each pair of rows the paper compares (:data:`COMPARISONS`), the paper's difference with ours — the direction is
read from the paper's own numbers, never assumed.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from brdlib.config import Config
from brdlib.report import AVERAGE_NOTE, INTERVAL_NOTE, accuracy_bars, paper_table
from brdlib.results import TEST_ORDER, load_results

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ARTEFACTS", "COMPARISONS", "TABLE3_BLOCKS", "Artefact", "Comparison", "agreement_summary", "artefact_agreement",
    "artefact_index", "claim_checks", "combined_table", "load_ours", "ours_by_block", "setup_difference",
    "table3_averages", "table3_figure",
]


@dataclass(frozen=True)
class Artefact:
    """One table or figure of the paper and the files of ours that regenerate it."""

    paper: str  # "Table 3", "Figure 2"
    reference: str  # brdlib/paper_reference name ("table3"), or "figure_claims"
    what: str
    notebook: str
    files: tuple[str, ...]  # display stems under figures/<profile>/ (tables: .csv; figures: .png)
    kind: str = "table"
    metric: str = "accuracy"  # the tidy rows' metric (brdlib.results.METRICS) compared with the paper's
    decimals: int = 1  # ours are compared as the display table shows them, at the paper's precision


ARTEFACTS: tuple[Artefact, ...] = (
    Artefact("Table 3", "table3", "main results: blind, relaxed and supervised tests", "04, 05, 06",
             ("04_table3_blind", "05_table3_relaxed", "06_table3_supervised")),
    Artefact("Table 4", "table4", "BRD on top of SKD, MiniLLM and TaskDistillation", "04, 05",
             ("04_table4_kd", "05_table4_taskdistillation")),
    Artefact("Table 5", "table5", "teacher-student cross-entropy before and after BRD", "07", ("07_table5",),
             metric="cross_entropy", decimals=2),
    Artefact("Table 6", "table6", "two teachers", "04", ("04_table6",)),
    Artefact("Table 7", "table7", "passage- against sentence-level BRD", "04", ("04_table7",)),
    Artefact("Table 8", "table8", "BRD² without NER or QRA data", "05", ("05_table8",)),
    Artefact("Table 10", "table10", "the reduced BIG-bench set", "05, 06", ("05_table10", "06_table10")),
    Artefact("Table 11", "table11", "FBRD (from the base) against BRD² (from XGLM-BRD)", "05", ("05_table11",)),
    Artefact("Table 12", "table12", "BRD without sentiment-related QRA data", "04", ("04_table12",)),
    Artefact("Figure 2", "figure_claims", "data-size curve", "09", ("09_figure2", "09_data_size"), "figure"),
    Artefact("Figure 3", "figure_claims", "per-task BIG-bench accuracy, BRD against the base", "04",
             ("04_figure3_bigbench",), "figure"),
    Artefact("Figure 4", "figure_claims", "layer-wise probing", "08", ("08_figure4", "08_probing"), "figure"),
)


@dataclass(frozen=True)
class Comparison:
    """A difference the paper draws between two rows of a table: ``a`` minus ``b`` on ``task``."""

    table: str
    a: str
    b: str
    task: str = "average"
    block: str | None = None  # the paper's block to read (Table 4's init model); ours has one


COMPARISONS: tuple[Comparison, ...] = (
    Comparison("table3", "brd", "student_base"),
    Comparison("table3", "brd", "further"),
    Comparison("table3", "brd", "large_baseline"),
    Comparison("table3", "brd", "teacher"),
    Comparison("table3", "brd", "skd"),
    Comparison("table3", "brd", "minillm"),
    Comparison("table3", "brd2", "task_distillation"),
    Comparison("table3", "brd2_sft", "sft"),
    Comparison("table4", "skd_brd", "skd", block="GPT-2 760M"),
    Comparison("table4", "minillm_brd", "minillm", block="GPT-2 760M"),
    Comparison("table4", "task_distillation_brd", "task_distillation", block="XGLM-564M"),
    Comparison("table5", "brd", "student_base"),
    Comparison("table6", "brd_second_teacher", "brd"),
    Comparison("table7", "brd", "brd_sentence_level"),
    Comparison("table8", "brd2", "brd2_minus_ner"),
    Comparison("table8", "brd2", "brd2_minus_qra"),
    Comparison("table8", "brd2_minus_ner", "brd2_minus_qra"),
    Comparison("table10", "brd2", "task_distillation"),
    Comparison("table10", "brd2_sft", "sft"),
    Comparison("table11", "brd2", "fbrd"),
    Comparison("table12", "brd", "brd_minus_sentdata"),
)


def artefact_index(cfg: Config) -> pd.DataFrame:
    """Each paper table/figure, the notebook and files of ours, and whether this profile's run made them."""
    import pandas as pd

    rows = []
    for art in ARTEFACTS:
        present = [f for f in art.files if _path(cfg, f) is not None]
        rows.append({"paper": art.paper, "what": art.what, "notebook": art.notebook,
                     "files": ", ".join(f"{f}{_path(cfg, f).suffix}" for f in present) if present else "",
                     "missing": ", ".join(f for f in art.files if f not in present)})
    return pd.DataFrame(rows)


def _path(cfg: Config, stem: str) -> Path | None:
    for suffix in (".csv", ".png"):
        path = cfg.figures_dir / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def ours_by_block(cfg: Config, art: Artefact, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our numbers for one table artefact, ``role, task, value, test``, from the tidy results (``results``, default
    :func:`brdlib.results.load_results`): every test's block stacked in :data:`brdlib.results.TEST_ORDER`
    (duplicates kept; other tests after them), values rounded to the artefact's ``decimals`` as its display table
    shows them; cells without a value (a role lacking a task of the average) are left out."""
    frame = load_results(cfg) if results is None else results
    rows = frame[(frame["artefact"] == art.reference) & (frame["metric"] == art.metric)].dropna(subset=["value"])
    priority = {t: i for i, t in enumerate(TEST_ORDER)}  # other tests (Table 5's cross_entropy) after these
    rows = rows.assign(_order=[priority.get(t, len(priority)) for t in rows["test"]])
    rows = rows.sort_values("_order", kind="stable").assign(value=lambda d: d["value"].round(art.decimals))
    return rows[["role", "task", "value", "test"]].reset_index(drop=True)


def load_ours(cfg: Config, art: Artefact, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our numbers for one table artefact, one per (role, task): the earliest test in
    :data:`brdlib.results.TEST_ORDER` wins a duplicate cell. Table 3's main block is the blind test; the relaxed
    and supervised blocks repeat reference rows (``student_base``, ``brd``) scored on another split (the
    protocols' held-out examples), which must not replace the blind numbers the paper's comparisons are about."""
    return ours_by_block(cfg, art, results).drop_duplicates(["role", "task"], keep="first").reset_index(drop=True)


def combined_table(cfg: Config, art: Artefact) -> pd.DataFrame:
    """The saved display tables of one artefact stacked into one, for reading (Table 3: blind, relaxed, supervised
    blocks); the numbers compared with the paper come from the tidy results (:func:`load_ours`)."""
    import pandas as pd

    frames = [pd.read_csv(p).assign(source=p.stem)
              for f in art.files if (p := _path(cfg, f)) is not None and p.suffix == ".csv"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cell(frame: pd.DataFrame, role: str, task: str, tasks: list[str] | None = None) -> float | None:
    """A row's value on ``task``; for ``average`` without such a column (Tables 5, 11), the plain mean over
    ``tasks`` (the paper's columns), only when the row has all of them."""
    hit = frame[(frame["role"] == role) & (frame["task"] == task)]
    if len(hit):
        return float(hit["value"].iloc[0])
    if task == "average" and tasks:
        values = frame[(frame["role"] == role) & frame["task"].isin(tasks)]["value"]
        if len(values) == len(tasks):
            return float(values.mean())
    return None


def claim_checks(cfg: Config) -> pd.DataFrame:
    """For each paper comparison: the paper's a − b, ours, and whether the direction agrees (blank if not run)."""
    import pandas as pd

    by_ref = {a.reference: a for a in ARTEFACTS if a.kind == "table"}
    results = load_results(cfg)  # read once for every comparison
    rows = []
    for c in COMPARISONS:
        paper = paper_table(c.table)
        if c.block is not None:
            paper = paper[paper["block"] == c.block]
        tasks = [t for t in dict.fromkeys(paper["task"]) if t != "average"]
        pa, pb = _cell(paper, c.a, c.task, tasks), _cell(paper, c.b, c.task, tasks)
        ours = load_ours(cfg, by_ref[c.table], results)
        oa, ob = _cell(ours, c.a, c.task, tasks), _cell(ours, c.b, c.task, tasks)
        paper_delta = pa - pb if pa is not None and pb is not None else None
        ours_delta = oa - ob if oa is not None and ob is not None else None
        agrees = None
        if paper_delta is not None and ours_delta is not None:
            agrees = "yes" if paper_delta * ours_delta > 0 or paper_delta == ours_delta == 0 else "no"
        rows.append({
            "table": c.table, "comparison": f"{c.a} − {c.b}", "task": c.task,
            "paper block": c.block or "", "paper Δ": paper_delta, f"ours ({cfg.profile}) Δ": ours_delta,
            "same direction": agrees if agrees is not None else ("not run" if ours_delta is None else ""),
        })
    return pd.DataFrame(rows)


def agreement_summary(checks: pd.DataFrame) -> str:
    """One line: how many of the paper's comparisons our run reproduces in direction, of those it ran."""
    ran = checks[checks["same direction"].isin(["yes", "no"])]
    same = int((ran["same direction"] == "yes").sum())
    return (f"{same} of {len(ran)} comparisons the paper draws point the same way in this run "
            f"({len(checks) - len(ran)} not run on this profile)")


TABLE3_BLOCKS: tuple[str, ...] = TEST_ORDER  # Table 3's blocks are the three tests, in the paper's order


def _table3_average_cells(cfg: Config) -> pd.DataFrame:
    """Table 3's Average column, long: setting, role, value, source (``ours (<profile>)`` or ``paper``), and for
    ours its 95% interval (examples resampled within each task), chance level and n from the tidy results."""
    import pandas as pd

    art = next(a for a in ARTEFACTS if a.reference == "table3")
    results = load_results(cfg)
    ours = ours_by_block(cfg, art, results)  # each block's own rows, reference rows included
    ours = ours[ours["task"] == "average"].rename(columns={"test": "setting"})
    extra = results[(results["artefact"] == "table3") & (results["metric"] == art.metric)
                    & (results["task"] == "average")][["test", "role", "ci_low", "ci_high", "chance", "n"]]
    ours = ours.merge(extra.rename(columns={"test": "setting"}).drop_duplicates(["setting", "role"]),
                      on=["setting", "role"], how="left")
    paper = paper_table("table3")
    paper = paper[paper["task"] == "average"][["setting", "role", "value"]]
    return pd.concat([ours[["setting", "role", "value", "ci_low", "ci_high", "chance", "n"]]
                      .assign(source=f"ours ({cfg.profile})"), paper.assign(source="paper")], ignore_index=True)


def table3_averages(cfg: Config) -> pd.DataFrame:
    """Table 3's Average per test and row: the paper's model name, ours with its 95% interval (examples resampled
    within each task), n (examples over all its tasks) and chance level, the paper's and ours − paper."""
    import pandas as pd

    cells = _table3_average_cells(cfg)
    wide = cells.pivot_table(index=["setting", "role"], columns="source", values="value", sort=False).reset_index()
    ours_col = f"ours ({cfg.profile})"
    mine = cells[cells["source"] == ours_col].set_index(["setting", "role"])
    for col in (ours_col, "paper"):
        if col not in wide:
            wide[col] = float("nan")
    wide.columns.name = None
    paper_rows = paper_table("table3").drop_duplicates(["setting", "role"]).reset_index(drop=True)
    names = paper_rows.set_index(["setting", "role"])["model"]
    keys = list(zip(wide["setting"], wide["role"], strict=True))
    wide.insert(2, "model (paper)", [names.get(k, "reference row (the protocols' held-out split)") for k in keys])
    wide["delta"] = (wide[ours_col] - wide["paper"]).round(1)
    wide["95% CI"] = [f"[{mine.loc[k, 'ci_low']:.1f}, {mine.loc[k, 'ci_high']:.1f}]"
                      if k in mine.index and pd.notna(mine.loc[k, "ci_low"]) else "" for k in keys]
    wide["n"] = pd.array([int(mine.loc[k, "n"]) if k in mine.index and pd.notna(mine.loc[k, "n"]) else None
                          for k in keys], dtype="Int64")
    wide["chance"] = [round(float(mine.loc[k, "chance"]), 1) if k in mine.index else float("nan") for k in keys]
    paper_order = {k: i for i, k in enumerate(zip(paper_rows["setting"], paper_rows["role"], strict=True))}
    block = {s: i for i, s in enumerate(TABLE3_BLOCKS)}
    wide["_order"] = [(block.get(k[0], 9), paper_order.get(k, len(paper_order))) for k in keys]
    wide = wide.sort_values("_order", kind="stable").rename(columns={"setting": "test"})
    return wide[["test", "role", "model (paper)", ours_col, "95% CI", "n", "chance", "paper", "delta"]].reset_index(
        drop=True)


def table3_figure(cfg: Config) -> object:
    """Average accuracy of every Table 3 row, ours beside the paper's (bars), one panel per block; our bars with
    their 95% intervals (examples resampled within each task), the chance level and n per row."""
    import matplotlib.pyplot as plt

    both = _table3_average_cells(cfg)
    settings = [s for s in ("blind", "relaxed", "supervised") if s in set(both["setting"])]
    widths = [max(1, both[both["setting"] == s]["role"].nunique()) for s in settings]
    fig, axes = plt.subplots(1, len(settings), figsize=(2 + 0.9 * sum(widths), 3.8), sharey=True,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, setting in zip(axes[0], settings, strict=True):
        part = both[both["setting"] == setting]
        order = list(dict.fromkeys(part[part["source"] == "paper"]["role"].tolist() + part["role"].tolist()))
        levels = part["chance"].dropna()  # one test's rows average the same tasks: one chance level for all
        chance = {role: float(levels.mean()) for role in order} if len(levels) else None
        accuracy_bars(ax, part, x="role", hue="source", order=order, hue_order=[f"ours ({cfg.profile})", "paper"],
                      chance=chance)
        ax.set_title(setting)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    legend = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[0][-1].legend(legend.values(), legend.keys(), title="source", loc="upper left",
                       bbox_to_anchor=(1.01, 1))  # off the bars
    axes[0][0].set_ylabel("average accuracy (%)")
    head = f"Table 3 averages: ours ({cfg.scale_note}) and the paper's"
    fig.suptitle(textwrap.fill(f"{head}; {INTERVAL_NOTE}; {AVERAGE_NOTE}; n (examples over the row's tasks) under "
                               "each row", 120), y=1.04, fontsize=10)
    fig.tight_layout()
    return fig


def setup_difference(cfg: Config) -> str:
    """How this profile's setup differs from the paper's, in one line (models and scale)."""
    m, d, t = cfg.models, cfg.data, cfg.recipe("brd")
    return (f"teacher {m.teacher} (paper: Vicuna-13B), student {m.student} (paper: XGLM-564M); "
            f"{d.n_sentences:,} corpus sentences from {d.corpus} (paper: 5M from CC-100); {t.max_steps:,} steps of "
            f"{t.batch_size}x{t.max_length} tokens (paper: up to 40,000 of 8x2048); "
            f"up to {d.max_examples_per_task or 'all'} examples per task and split (paper: full test sets)")


def artefact_agreement(cfg: Config) -> pd.DataFrame:
    """Per paper table: cells of ours beside the paper's, their mean |ours − paper|, and how many of the paper's
    comparisons point the same way here."""
    import pandas as pd

    checks = claim_checks(cfg)
    results = load_results(cfg)
    rows = []
    for art in ARTEFACTS:
        if art.kind != "table":
            continue
        ours = load_ours(cfg, art, results)
        paper = paper_table(art.reference)
        merged = ours.merge(paper[["role", "task", "value"]].drop_duplicates(["role", "task"]),
                            on=["role", "task"], suffixes=("_ours", "_paper"))
        mine = checks[(checks["table"] == art.reference) & checks["same direction"].isin(["yes", "no"])]
        rows.append({
            "paper": art.paper, "what": art.what, "cells beside the paper's": len(merged),
            "mean |ours − paper|": round(float((merged["value_ours"] - merged["value_paper"]).abs().mean()), 1)
            if len(merged) else None,
            "comparisons same direction": f"{int((mine['same direction'] == 'yes').sum())} of {len(mine)}"
            if len(mine) else "none run",
        })
    return pd.DataFrame(rows)
