"""Saving tables and figures of a profile, each captioned with the profile, models and data sizes,
and the paper's reference numbers beside ours.

Tables go to ``figures/<profile>/<name>.csv``, ``.md`` and ``.tex``; figures to ``figures/<profile>/<name>.png``.
The paper's numbers live in ``brdlib/paper_reference/tableN.csv`` (see its README): :func:`paper_table` loads
one, :func:`side_by_side` puts "ours (<profile>)" and "paper" columns per task beside each other.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from brdlib.config import Config

__all__ = [
    "AVERAGE_NOTE", "CHANCE_GID", "FIGURE_CLAIM_COLUMNS", "INTERVAL_NOTE", "MEASURED_COLUMNS", "PAPER_REFERENCE_DIR",
    "PAPER_TABLE_COLUMNS", "accuracy_bars", "available_paper_tables", "n_label", "compare_tables",
    "compare_with_paper", "latex_escape", "model_size_figure", "paper_rows", "paper_table", "save_figure",
    "save_table", "set_style", "side_by_side", "side_by_side_figure", "with_average",
]

PAPER_TABLE_COLUMNS: tuple[str, ...] = (
    "table", "setting", "block", "model", "role", "task", "task_paper", "metric", "value", "note",
)
"""Columns of every ``paper_reference/tableN.csv``."""

FIGURE_CLAIM_COLUMNS: tuple[str, ...] = ("figure", "section", "quantity", "value", "approximate", "quote")
"""Columns of ``paper_reference/figure_claims.csv`` (the few numbers the text gives about Figures 2 and 3)."""


CHANCE_GID = "chance"
"""``gid`` of the chance-level lines every accuracy figure draws (what tests look for)."""
INTERVAL_NOTE = "bars/points of ours: 95% bootstrap intervals over examples; dashed: chance (mean 1/candidates)"
"""How the accuracy figures' intervals and chance lines are made, for their titles."""
AVERAGE_NOTE = "an average's interval: examples resampled within each task"
"""How an average's interval is made (:func:`brdlib.evaluate.bootstrap_ci_of_task_mean`), for figure titles."""

MEASURED_COLUMNS: frozenset[str] = frozenset({"seconds", "sentences/s", "tokens/s", "MFU", "load_s", "generate_s"})
"""Columns that time the machine, not the method (model loading, teacher and training speed): they differ between
two runs of the same study, so :func:`compare_tables` leaves them out and names them."""


def compare_tables(first: Path, second: Path, measured: frozenset[str] = MEASURED_COLUMNS) -> list[str]:
    """Every difference between the CSV tables of two runs' ``figures/<profile>`` folders, one line each (empty when
    they are identical): a table only one run has, other columns, or a cell that differs (the first few per table).
    Columns in ``measured`` are compared by presence only."""
    import pandas as pd

    diffs: list[str] = []
    names_a = {p.name for p in Path(first).glob("*.csv")}
    names_b = {p.name for p in Path(second).glob("*.csv")}
    diffs += [f"{name}: only in {first}" for name in sorted(names_a - names_b)]
    diffs += [f"{name}: only in {second}" for name in sorted(names_b - names_a)]
    for name in sorted(names_a & names_b):
        a = pd.read_csv(Path(first) / name, dtype=str, keep_default_na=False)
        b = pd.read_csv(Path(second) / name, dtype=str, keep_default_na=False)
        if list(a.columns) != list(b.columns) or a.shape != b.shape:
            diffs.append(f"{name}: columns or shape differ "
                         f"({list(a.columns)} {a.shape} vs {list(b.columns)} {b.shape})")
            continue
        kept = [c for c in a.columns if c not in measured]
        unequal = a[kept].ne(b[kept])
        cells = [(r, c) for r, c in zip(*unequal.to_numpy().nonzero(), strict=True)]
        diffs += [f"{name}: row {r} column {kept[c]!r}: {a[kept[c]].iloc[r]!r} vs {b[kept[c]].iloc[r]!r}"
                  for r, c in cells[:5]]
        if len(cells) > 5:
            diffs.append(f"{name}: {len(cells) - 5} more cells differ")
    return diffs


def set_style() -> None:
    """The study's one figure style; in a notebook, figures shown as PNG at 100 dpi (what the published executed
    notebooks under ``figures/<profile>/notebooks/`` carry; ``save_figure`` writes 150 dpi files)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    mpl.rcParams["figure.dpi"] = 100
    try:
        from IPython import get_ipython
    except ImportError:
        return
    if get_ipython() is not None:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")


def save_table(df: pd.DataFrame, cfg: Config, name: str, title: str = "") -> Path:
    """Write ``df`` as CSV, as Markdown headed by ``title`` and the profile's caption, and as a LaTeX table
    captioned likewise; return the .md path. Missing cells are empty in all three."""
    out = cfg.figures_dir
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False)
    header = f"**{title}**\n\n" if title else ""
    shown = df.astype(object).where(df.notna(), None)  # tabulate prints NaN as "nan"; None as missingval
    md = f"{header}{shown.to_markdown(index=False, missingval='')}\n\n_{cfg.caption()}_\n"
    (out / f"{name}.md").write_text(md)
    caption = f"{title}. {cfg.caption()}" if title else cfg.caption()
    tex = df.to_latex(index=False, escape=True, na_rep="", float_format=_latex_number,
                      caption=latex_escape(caption), label=f"tab:{name}")
    (out / f"{name}.tex").write_text(tex)
    return out / f"{name}.md"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in free text (pandas escapes cells, not captions; its helper is private)."""
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIALS[m.group()], text)


def _latex_number(value: float) -> str:
    """Up to four decimals, trailing zeros dropped but one kept: 50.0 -> '50.0', 52.34 -> '52.34'."""
    text = f"{value:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def save_figure(fig: Figure, cfg: Config, name: str) -> Path:
    """Write ``fig`` as PNG (150 dpi) under the profile's figures directory; return the path."""
    out = cfg.figures_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def model_size_figure(models: pd.DataFrame, profile: str) -> Figure:
    """Dot plot of parameters per role (log scale): this profile's models against the paper's.

    ``models`` is the table of :func:`brdlib.models.check_models` (columns role, spec, params_M,
    paper_model, paper_params_M). Dots, not bars: a log axis has no zero for a bar to start from.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.8 * len(models)))
    y = range(len(models))
    for column, spec_col, label, marker, dy in [("params_M", "spec", f"ours ({profile})", "o", 9),
                                                 ("paper_params_M", "paper_model", "paper", "s", -15)]:
        ax.scatter(models[column], y, s=90, marker=marker, label=label, zorder=3)
        for yi, (value, spec) in enumerate(zip(models[column], models[spec_col], strict=True)):
            if value == value:  # not NaN
                ax.annotate(spec, (value, yi), xytext=(0, dy), textcoords="offset points", ha="center", fontsize=8)
    ax.set_yticks(list(y), models["role"])
    ax.set_ylim(len(models) - 0.3, -0.6)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (millions, log scale)")
    ax.set_title(f"Models by role: profile {profile!r} against the paper", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    ax.margins(x=0.15)
    return fig


# The paper's reference numbers -------------------------------------------------------------------


PAPER_REFERENCE_DIR = Path(__file__).resolve().parent / "paper_reference"
"""The transcribed tables, shipped as package data (``brdlib`` is a namespace package, which
``importlib.resources`` cannot read under an editable install, so the folder is found beside this file)."""


def available_paper_tables() -> list[str]:
    """Names :func:`paper_table` accepts: ``table3`` … ``table12`` and ``figure_claims``."""
    names = [p.stem for p in PAPER_REFERENCE_DIR.glob("*.csv")]
    return sorted(names, key=lambda n: (not n.startswith("table"), len(n), n))


def paper_table(name: str) -> pd.DataFrame:
    """The paper's numbers of one table, tidy: one row per (block, model, task) cell, columns
    :data:`PAPER_TABLE_COLUMNS` (``figure_claims``: :data:`FIGURE_CLAIM_COLUMNS`). Empty text cells are ''.

    >>> paper_table("table3").query("role == 'teacher' and task == 'xnli'")["value"].item()
    59.1
    """
    import pandas as pd

    available = available_paper_tables()
    if name not in available:
        raise KeyError(f"no paper table {name!r}; available: {', '.join(available)}")
    return pd.read_csv(PAPER_REFERENCE_DIR / f"{name}.csv", keep_default_na=False, dtype={"block": str, "note": str})


def paper_rows(name: str, **where: str) -> pd.DataFrame:
    """:func:`paper_table` restricted to rows whose columns equal ``where`` (e.g. ``setting="blind"``,
    ``block="GPT-2 760M"``); a bad column or a value the table lacks is an error naming what it has."""
    paper = paper_table(name)
    for column, wanted in where.items():
        if column not in paper.columns:
            raise KeyError(f"paper table {name!r} has no column {column!r}; columns: {', '.join(paper.columns)}")
        have = list(dict.fromkeys(paper[column]))
        if wanted not in have:
            raise ValueError(f"paper table {name!r} has no {column}={wanted!r}; it has: {have}")
        paper = paper[paper[column] == wanted]
    return paper.reset_index(drop=True)


def _check_tidy(frame: pd.DataFrame, what: str, keys: list[str]) -> pd.DataFrame:
    """``frame`` with float values, after checking it has one row per (keys, task) and numeric values."""
    import pandas as pd

    missing = [c for c in [*keys, "task", "value"] if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; side_by_side needs tidy rows with columns "
                         f"{[*keys, 'task', 'value']} (one row per model and task); it has {list(frame.columns)}")
    dup = frame[frame.duplicated([*keys, "task"], keep=False)]
    if len(dup):
        first = dup[[*keys, "task"]].drop_duplicates().head(3).to_dict("records")
        raise ValueError(f"{what} has several rows for the same {[*keys, 'task']}, e.g. {first}; filter it "
                         "(e.g. paper_rows(name, block=...)) or add the distinguishing column to `on`")
    try:
        values = pd.to_numeric(frame["value"], errors="raise").astype(float)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{what} has a non-numeric value ({err}); values must be numbers, NaN where missing") from None
    return frame.assign(value=values)


def _check_percent(ours: pd.DataFrame, paper: pd.DataFrame) -> None:
    """Catch accuracies given as fractions: the paper's are percentages."""
    if "metric" in paper.columns and set(paper["metric"]) != {"accuracy"}:
        return
    values = ours["value"].dropna()
    if len(values) and 0 < values.max() <= 1 and paper["value"].max() > 1:
        raise ValueError(f"ours looks like fractions (largest value {values.max():g}); the paper's accuracies "
                         "are percentages: multiply by 100")


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, profile: str, *, on: Sequence[str] = ("role",),
                 decimals: int | None = 1) -> pd.DataFrame:
    """Wide table: one row per model (``on`` keys), and per task the columns ``<task>: ours (<profile>)``,
    ``<task>: paper`` and ``<task>: delta`` (ours − paper).

    Both inputs are tidy (columns ``on``, ``task``, ``value``), the paper's from :func:`paper_table`. Rows and
    tasks follow the paper's order, then any of ours the paper lacks. A cell ours lacks (a model not run on this
    profile) stays empty, and so does its delta: nothing is ever filled from the paper. ``decimals`` rounds ours
    (None: as given) and the delta is taken from the rounded value; the paper's values stay as printed. A
    ``model`` column of the paper, if any, is kept as ``model (paper)`` beside the keys.
    """
    import pandas as pd

    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must be a non-empty profile name such as 'smoke', got {profile!r}")
    keys = list(on)
    if not keys:
        raise ValueError("on must name at least one key column, e.g. ('role',)")
    ours, paper = _check_tidy(ours, "ours", keys), _check_tidy(paper, "paper", keys)
    if "metric" in ours.columns and "metric" in paper.columns:
        if set(ours["metric"].dropna()) - set(paper["metric"]):
            raise ValueError(f"ours has metrics {sorted(set(ours['metric'].dropna()))} but the paper's table has "
                             f"{sorted(set(paper['metric']))}")
    _check_percent(ours, paper)

    def cells(frame: pd.DataFrame) -> dict[tuple[str, ...], float]:
        """(*keys, task) -> value."""
        index = frame[[*keys, "task"]].astype(str).itertuples(index=False, name=None)
        return dict(zip(index, frame["value"], strict=True))

    def key_of(frame: pd.DataFrame) -> list[tuple[str, ...]]:
        return list(frame[keys].astype(str).itertuples(index=False, name=None))

    ours_values, paper_values = cells(ours), cells(paper)
    rows = list(dict.fromkeys([*key_of(paper), *key_of(ours)]))
    tasks = list(dict.fromkeys([*paper["task"].astype(str), *ours["task"].astype(str)]))

    table = pd.DataFrame(rows, columns=keys)
    if "model" in paper.columns and "model" not in keys:
        names = dict(zip(key_of(paper), paper["model"], strict=True))
        table["model (paper)"] = [names.get(r, "") for r in rows]
    for task in tasks:
        mine = pd.Series([ours_values.get((*r, task), float("nan")) for r in rows], dtype=float)
        theirs = pd.Series([paper_values.get((*r, task), float("nan")) for r in rows], dtype=float)
        if decimals is not None:
            mine = mine.round(decimals)
        delta = mine - theirs  # of the shown (rounded) ours, so each row reads consistently
        table[f"{task}: ours ({profile})"] = mine
        table[f"{task}: paper"] = theirs
        table[f"{task}: delta"] = delta if decimals is None else delta.round(max(decimals, 2))
    return table


def with_average(ours: pd.DataFrame, tasks: Sequence[str], *, on: Sequence[str] = ("role",),
                 name: str = "average") -> pd.DataFrame:
    """``ours`` plus, per model, a row with task ``name``: the plain mean over ``tasks``, as the paper's Average
    column is; empty when the model lacks any of those tasks (a mean over fewer tasks is not comparable).

    The paper's tasks of a table: ``[t for t in dict.fromkeys(paper_table("table3")["task"]) if t != "average"]``.
    """
    import pandas as pd

    keys, wanted = list(on), list(tasks)
    if not wanted:
        raise ValueError("tasks must name the tasks to average, e.g. ['xnli', 'rte', 'cb']")
    ours = _check_tidy(ours, "ours", keys)
    if (ours["task"] == name).any():
        raise ValueError(f"ours already has rows with task {name!r}")
    present = ours[ours["task"].isin(wanted)].dropna(subset=["value"])
    grouped = present.groupby(keys, sort=False)["value"]
    means = grouped.mean().where(grouped.count() == len(wanted))
    models = ours[keys].drop_duplicates()
    averages = models.merge(means.rename("value").reset_index(), on=keys, how="left").assign(task=name)
    return pd.concat([ours, averages], ignore_index=True)


def compare_with_paper(ours: pd.DataFrame, table: str, profile: str, *, on: Sequence[str] = ("role",),
                       decimals: int | None = 1, **where: str) -> pd.DataFrame:
    """:func:`side_by_side` of ``ours`` against the paper's ``table`` (rows picked by ``where``, as
    :func:`paper_rows`), e.g. ``compare_with_paper(ours, "table3", cfg.profile, setting="blind")``."""
    return side_by_side(ours, paper_rows(table, **where), profile, on=on, decimals=decimals)


def n_label(values: Sequence[float]) -> str:
    """``n=16``, or ``n=8-16`` when the models of a group scored different numbers of examples; '' without any."""
    import pandas as pd

    ns = sorted({int(v) for v in values if not pd.isna(v)})
    if not ns:
        return ""
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def accuracy_bars(ax: object, frame: pd.DataFrame, *, x: str, hue: str, order: Sequence[str] | None = None,
                  hue_order: Sequence[str] | None = None, chance: dict[str, float] | None = None,
                  width: float = 0.8) -> None:
    """Grouped bars of ``frame``'s ``value`` (%) per ``x`` group and ``hue`` on ``ax``, with the 95% interval
    (``ci_low``, ``ci_high``) as an error bar on every bar that has one, each group's chance level (``chance``:
    x value -> %, default the mean of ``frame``'s ``chance`` column per group) as a dashed segment across the group
    (gid :data:`CHANCE_GID`), and each group's ``n`` under its label."""
    import numpy as np
    import pandas as pd
    import seaborn as sns

    frame = frame.dropna(subset=["value"])
    order = list(order) if order is not None else list(dict.fromkeys(frame[x]))
    hue_order = list(hue_order) if hue_order is not None else list(dict.fromkeys(frame[hue]))
    colours = sns.color_palette("colorblind", max(1, len(hue_order)))  # by position: the same in every panel
    step = width / max(1, len(hue_order))
    for j, h in enumerate(hue_order):
        part = frame[frame[hue] == h].drop_duplicates(x).set_index(x)
        if part.empty:
            continue
        at = [i for i, g in enumerate(order) if g in part.index]
        rows = part.loc[[order[i] for i in at]]
        pos = np.array(at, dtype=float) - width / 2 + step * (j + 0.5)
        ax.bar(pos, rows["value"], step, label=h, color=colours[j])
        if {"ci_low", "ci_high"} <= set(rows.columns):
            has = rows["ci_low"].notna().to_numpy() & rows["ci_high"].notna().to_numpy()
            if has.any():
                v, lo, hi = (rows[c].to_numpy(dtype=float)[has] for c in ("value", "ci_low", "ci_high"))
                ax.errorbar(pos[has], v, yerr=np.vstack([v - lo, hi - v]), fmt="none", ecolor="black",
                            elinewidth=1, capsize=2, label="_interval")
    if chance is None and "chance" in frame.columns:
        chance = frame.dropna(subset=["chance"]).groupby(x)["chance"].mean().to_dict()
    segments = [(i, chance[g]) for i, g in enumerate(order) if chance and pd.notna(chance.get(g))]
    if segments:
        ax.hlines([c for _, c in segments], [i - width / 2 for i, _ in segments],
                  [i + width / 2 for i, _ in segments], colors="black", linestyles="--", lw=1, label="chance",
                  gid=CHANCE_GID, zorder=3)
    counts = frame.groupby(x)["n"].apply(list).to_dict() if "n" in frame.columns else {}
    labels = [f"{g}\n{n_label(counts.get(g, []))}".strip() for g in order]
    ax.set_xticks(range(len(order)), labels)
    ax.set_ylim(0, 100)


def side_by_side_figure(ours: pd.DataFrame, paper: pd.DataFrame, profile: str, *, on: str = "role",
                        title: str = "") -> Figure:
    """Bars per task, ours (<profile>) beside the paper, one panel per model (``on``); tidy inputs as
    :func:`side_by_side`. A cell ours lacks has no bar. Where ``ours`` has ``ci_low``/``ci_high``, ``chance`` and
    ``n`` (:func:`brdlib.evaluate.accuracy_table`'s columns), our bars carry their 95% intervals, each task its
    chance level (the same in every panel) and its n."""
    import matplotlib.pyplot as plt
    import pandas as pd

    ours, paper = _check_tidy(ours, "ours", [on]), _check_tidy(paper, "paper", [on])
    _check_percent(ours, paper)
    ours_label = f"ours ({profile})"
    extra = [c for c in ("ci_low", "ci_high", "chance", "n") if c in ours.columns]
    both = pd.concat([ours[[on, "task", "value", *extra]].assign(source=ours_label),
                      paper[[on, "task", "value"]].assign(source="paper")], ignore_index=True)
    both[on] = both[on].astype(str)
    panels = list(dict.fromkeys([*paper[on].astype(str), *ours[on].astype(str)]))
    order = list(dict.fromkeys([*paper["task"].astype(str), *ours["task"].astype(str)]))
    chance = (ours.dropna(subset=["chance"]).groupby("task")["chance"].mean().to_dict()
              if "chance" in ours.columns else None)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), sharey=True, squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        accuracy_bars(ax, both[both[on] == panel], x="task", hue="source", order=order,
                      hue_order=[ours_label, "paper"], chance=chance)
        ax.set_title(panel)
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    metric = ", ".join(sorted(set(paper["metric"]))) if "metric" in paper.columns else "value"
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    legend = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels(),
                                                                          strict=True)}
    fig.legend(legend.values(), legend.keys(), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    head = f"{title}; " if title else ""
    fig.suptitle(textwrap.fill(f"{head}{INTERVAL_NOTE}; {AVERAGE_NOTE}; n per task under its name", 110), y=1.0,
                 fontsize=10)
    fig.tight_layout()
    return fig
