"""The data-size curve: students on growing shares of the BRD passages (Figure 2, §5.6; notebook 09).

    from brdlib import data_size
    plan = data_size.data_size_plan(cfg)                # fraction -> variant, student, steps
    students = data_size.train_size_students(cfg, plan)

**Figure 2 (§5.6).** One student per share f of the source passages (variant ``brd_frac<f>``; f = 1 is ``brd``
itself), scored blind on the test split, plotted against the passages (and tokens) of BRD data, the base student
at 0. ``analysis.data_size_steps: epochs`` trains each size for ``recipes.brd.max_steps`` times its share of the BRD
tokens, so every point reads its data as many times as ``brd`` does; ``fixed`` trains every size for
``recipes.ablation.max_steps`` steps (then f = 1 is retrained at those steps so the curve has one schedule).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from brdlib.assemble import size_variant_name
from brdlib.config import Config
from brdlib.evaluate import TABLE_AVERAGE, TABLE_TASKS, evaluate_model, save_predictions
from brdlib.report import AVERAGE_NOTE, CHANCE_GID, INTERVAL_NOTE, n_label, paper_table
from brdlib.store import ensure, load_card
from brdlib.train import train_student

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "DataSizeError", "data_size_claims", "data_size_figure", "data_size_fractions", "data_size_frame",
    "data_size_plan", "data_size_table", "evaluate_sizes", "train_size_students",
]

log = logging.getLogger(__name__)


class DataSizeError(ValueError):
    """A data-size request that cannot run (named, with what is accepted)."""


def data_size_fractions(cfg: Config) -> list[float]:
    """The shares of the curve: ``analysis.data_size_fractions``, else ``passages.size_fractions``."""
    return list(cfg.analysis.data_size_fractions or cfg.passages.size_fractions)


def data_size_plan(cfg: Config) -> pd.DataFrame:
    """One row per size: ``fraction, variant, student, steps`` and the variant's source passages, rows and tokens
    (assembled here where missing). See the module docstring for the two step rules."""
    import pandas as pd

    fractions = data_size_fractions(cfg)
    mode = cfg.analysis.data_size_steps
    every = sorted(set([*fractions, 1.0]))
    ensure(cfg, *[f"passages/{size_variant_name(f)}" for f in every])
    cards = {f: load_card(cfg, size_variant_name(f)) for f in every}
    full_tokens = cards[1.0]["tokens"]["tokens"]
    full, fixed = cfg.recipes.brd.max_steps, cfg.recipes.ablation.max_steps
    rows = []
    for f in fractions:
        variant, card = size_variant_name(f), cards[f]
        if mode == "epochs":
            steps = full if f == 1 else max(1, round(full * card["tokens"]["tokens"] / max(full_tokens, 1)))
            student = variant
        else:
            steps = fixed
            student = "brd" if f == 1 and fixed == full else f"{variant}_steps{fixed}"
        rows.append({"fraction": f, "variant": variant, "student": student, "steps": steps,
                     "passages": card["source_passages"], "sentences": card["sentences"], "rows": card["rows"],
                     "tokens": card["tokens"]["tokens"]})
    return pd.DataFrame(rows)


def train_size_students(cfg: Config, plan: pd.DataFrame, progress: bool = True) -> dict[str, Path]:
    """Train (or reuse) the student of each size of ``plan``; returns student name -> directory."""

    return {r.student: train_student(cfg, r.variant, r.student, recipe="brd", max_steps=int(r.steps), progress=progress)
            for r in plan.itertuples()}


def evaluate_sizes(cfg: Config, plan: pd.DataFrame, base_role: str = "student_base",
                   progress: bool = True) -> pd.DataFrame:
    """Blind-test predictions of the base student and every size's student on up to
    ``analysis.data_size_max_examples`` test examples per task (cached scores reused). Only the size students'
    predictions are saved: the base's and ``brd``'s, possibly on fewer examples here, would overwrite notebook 04's."""
    import pandas as pd

    cap = cfg.analysis.data_size_max_examples
    shared = {base_role: "student", "brd": "brd"}
    frames = [evaluate_model(cfg, ref, role, max_examples=cap, progress=progress) for role, ref in shared.items()
              if role == base_role or role in set(plan["student"])]
    sizes = [evaluate_model(cfg, s, s, max_examples=cap, progress=progress) for s in plan["student"] if s not in shared]
    if sizes:
        save_predictions(cfg, pd.concat(sizes, ignore_index=True))
    return pd.concat([*frames, *sizes], ignore_index=True)


def data_size_frame(plan: pd.DataFrame, accuracy: pd.DataFrame, base_role: str = "student_base") -> pd.DataFrame:
    """Tidy curve: per size (the base student at 0) and task, the accuracy with its interval and ``n``, and the
    size in passages, tokens and steps; the Table 3 ``average`` over the paper's columns where all are present."""
    import pandas as pd

    sizes = [{"student": base_role, "fraction": 0.0, "passages": 0, "tokens": 0, "steps": 0},
             *plan[["student", "fraction", "passages", "tokens", "steps"]].to_dict("records")]
    size = pd.DataFrame(sizes)
    acc = accuracy.rename(columns={"role": "student"})
    merged = size.merge(acc, on="student", how="inner")
    tasks = [t for t in TABLE_TASKS if t in set(merged["task"])]
    if len(tasks) == len(TABLE_TASKS) and not (merged["task"] == TABLE_AVERAGE).any():  # accuracy_table's has its CI
        avg = merged[merged["task"].isin(tasks)].groupby(["student", "fraction", "passages", "tokens", "steps"],
                                                          as_index=False, sort=False)["value"].mean()
        merged = pd.concat([merged, avg.assign(task="average")], ignore_index=True)
    return merged.sort_values(["fraction", "task"], kind="stable").reset_index(drop=True)


def data_size_table(curve: pd.DataFrame, profile: str, decimals: int = 1) -> pd.DataFrame:
    """Wide: one row per size, the accuracy (%) per paper column and the average."""

    keys = ["fraction", "student", "passages", "tokens", "steps"]
    shown = curve[curve["task"].isin([*TABLE_TASKS, "average"])]
    wide = shown.pivot_table(index=keys, columns="task", values="value", sort=False).reset_index()
    columns = [t for t in [*TABLE_TASKS, "average"] if t in wide.columns]
    wide = wide[[*keys, *columns]].sort_values("fraction").round(decimals)
    return wide.rename(columns={t: f"{t}: ours ({profile})" for t in columns})


def data_size_claims(curve: pd.DataFrame) -> pd.DataFrame:
    """The paper's one statement on Figure 2 (``figure_claims.csv``) beside what our curve shows."""
    import pandas as pd

    claims = paper_table("figure_claims")
    claim = claims[claims["figure"] == "figure2"].iloc[0]
    avg = curve[curve["task"] == "average"].sort_values("fraction")
    by = avg if len(avg) else curve.groupby(["fraction", "passages"], as_index=False)["value"].mean()
    values = by["value"].to_numpy()
    steps = np.diff(values)
    rows = [
        {"quantity": "BRD passages: where the paper's curve plateaus; our largest size", "paper": claim["value"] * 1e6,
         "ours": int(by["passages"].max()), "note": f"paper: \"{claim['quote']}\""},
        {"quantity": "average accuracy, base student -> largest size (points)", "paper": np.nan,
         "ours": round(float(values[-1] - values[0]), 1) if len(values) > 1 else np.nan,
         "note": "the paper: \"most tasks exhibit a steady improvement as BRD data gets bigger\""},
        {"quantity": "size steps that raise the average accuracy", "paper": np.nan,
         "ours": f"{int((steps > 0).sum())} of {len(steps)}", "note": "a steady improvement raises it at every step"},
    ]
    return pd.DataFrame(rows, columns=["quantity", "paper", "ours", "note"])


def data_size_figure(curve: pd.DataFrame, x: Literal["passages", "tokens"] = "passages", title: str = "") -> Figure:
    """As the paper's Figure 2: accuracy (%) against the BRD data size, one panel per task (the paper's columns and
    the average), 95% intervals as error bars (the average's: examples resampled within each task), the chance
    level dashed, n in each panel's title; the base student is the point at 0."""
    import matplotlib.pyplot as plt

    tasks = [t for t in [*TABLE_TASKS, "average"] if t in set(curve["task"])]
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        part = curve[curve["task"] == task].sort_values(x)
        err = None
        if "ci_low" in part.columns and part["ci_low"].notna().any():
            err = np.nan_to_num(np.vstack([part["value"] - part["ci_low"], part["ci_high"] - part["value"]]))
        ax.errorbar(part[x], part["value"], yerr=err, marker="o", capsize=3)
        if "chance" in part.columns and part["chance"].notna().any():
            ax.axhline(float(part["chance"].mean()), ls="--", color="black", lw=1, label="chance", gid=CHANCE_GID)
        n = n_label(part["n"].tolist()) if "n" in part.columns else ""
        ax.set_title(f"{task} ({n})" if n else task, fontsize=10)
        ax.set_xlabel(f"BRD {x}")
        ax.set_ylabel("accuracy (%)")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle(textwrap.fill(f"{title + '; ' if title else ''}{INTERVAL_NOTE}; {AVERAGE_NOTE}", 150), fontsize=10)
    fig.tight_layout()
    return fig
