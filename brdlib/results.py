"""Tidy long-form results: every number of ours a notebook reports, one row each, written once per notebook.

Notebooks 04-09 save display tables (wide, side by side with the paper's) with :func:`brdlib.report.save_table`;
those are views for reading. What later code reads (notebook 10, :mod:`brdlib.paper_tables`) is this file per
notebook, ``figures/<profile>/results/<notebook>.csv``, with the columns :data:`RESULT_COLUMNS`:

``notebook``   the notebook that wrote the row (``04_blind_test``)
``artefact``   the paper table or figure the number feeds (``table3``, ``table4``, ``figure3``, ...)
``test``       the evaluation it comes from: ``blind``, ``relaxed``, ``supervised``, ``cross_entropy``, ``probing``
``block``      the paper's block of the artefact where it has several (Table 4: ``GPT-2 760M``), else empty
``role``       the model's role (``brd``, ``student_base``, ...; notebook 09: the data-size student)
``baseline``   for a difference (``metric`` ending ``_delta``): the role subtracted, else empty
``task``       the task (``rte``, ``bigbench_avg``, ``average`` = the plain mean over the artefact's paper columns)
``metric``     one of :data:`METRICS`
``value``      the number, unrounded (accuracies in percent)
``ci_low``, ``ci_high``  its 95% bootstrap interval, where computed (Table 3's ``average``: examples resampled
               within each task, :func:`brdlib.evaluate.bootstrap_ci_of_task_mean`)
``chance``     an accuracy's chance level (%): the mean of 1/candidates over its examples; for an average, the
               same mean of its tasks' chance levels
``n``          examples (texts for cross-entropy, test examples for probes) behind the value
``n_tasks``    tasks averaged into it (``bigbench_avg``), 1 for one task
``ties``, ``truncated``  examples whose best score was shared / whose context was cut (accuracy only)
``layer``      the probed layer (notebook 08)
``data_size``  BRD passages the student was trained on (notebook 09; 0 = the base student)
``rule``       the scoring rule (``mean``/``sum``) of an accuracy
``split``      the split scored (``test``, the protocols' held-out split)

Empty (NaN) where a field does not apply. This module imports only :mod:`brdlib.config` and :mod:`brdlib.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from brdlib.report import paper_rows, with_average

if TYPE_CHECKING:
    import pandas as pd

    from brdlib.config import Config

__all__ = [
    "COUNT_COLUMNS", "METRICS", "NUMBER_COLUMNS", "RESULT_COLUMNS", "TEST_ORDER", "TEXT_COLUMNS", "ResultsError",
    "accuracy_results", "all_accuracies", "check_results", "cross_entropy_results", "data_size_results",
    "load_results", "paired_results", "probing_results", "results_dir", "save_results", "tidy",
]

RESULT_COLUMNS: tuple[str, ...] = (
    "notebook", "artefact", "test", "block", "role", "baseline", "task", "metric", "value", "ci_low", "ci_high",
    "chance", "n", "n_tasks", "ties", "truncated", "layer", "data_size", "rule", "split",
)
"""The columns of every tidy results file, in this order (see the module's docstring for their meaning)."""

METRICS: frozenset[str] = frozenset({
    "accuracy",  # percent correct
    "accuracy_delta",  # paired accuracy difference role - baseline, in points, on the examples both scored
    "cross_entropy",  # teacher-student cross-entropy, -sum p log q over the task's texts (Table 5)
    "cross_entropy_per_text",  # the same, mean per text (interval: bootstrap over texts)
    "cross_entropy_delta",  # role - baseline summed over the same texts
    "probe_accuracy",  # a layer's linear probe, test accuracy in percent (Figure 4)
})

TEXT_COLUMNS = ("notebook", "artefact", "test", "block", "role", "baseline", "task", "metric", "rule", "split")
NUMBER_COLUMNS = tuple(c for c in RESULT_COLUMNS if c not in TEXT_COLUMNS)
COUNT_COLUMNS = ("n", "n_tasks", "ties", "truncated", "layer", "data_size")

TEST_ORDER: tuple[str, ...] = ("blind", "relaxed", "supervised")
"""Priority of the tests when one artefact has the same (role, task) from several: the blind test first. The
protocols' notebooks repeat reference rows (``student_base``, ``brd``) scored on their held-out split; those must
not replace the blind numbers the paper's comparisons are about."""


class ResultsError(ValueError):
    """A tidy results frame or file that does not follow :data:`RESULT_COLUMNS` / :data:`METRICS`."""


def results_dir(cfg: Config) -> Path:
    return cfg.figures_dir / "results"


def check_results(frame: pd.DataFrame, what: str = "results") -> pd.DataFrame:
    """``frame`` in :data:`RESULT_COLUMNS` order with typed columns, after checking it: every column present and no
    other, known metrics, numeric numbers, and one row per (artefact, test, block, role, baseline, task, metric,
    layer, data_size)."""
    import pandas as pd

    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(f"{what} lacks columns {missing}; tidy results need {list(RESULT_COLUMNS)}")
    extra = [c for c in frame.columns if c not in RESULT_COLUMNS]
    if extra:
        raise ResultsError(f"{what} has columns {extra} outside the tidy schema {list(RESULT_COLUMNS)}")
    unknown = sorted(set(frame["metric"].dropna().astype(str)) - METRICS)
    if unknown or frame["metric"].isna().any():
        raise ResultsError(f"{what} has unknown metrics {unknown or ['<empty>']}; known: {sorted(METRICS)}")
    out = frame[list(RESULT_COLUMNS)].copy()
    for column in NUMBER_COLUMNS:
        try:
            out[column] = pd.to_numeric(out[column], errors="raise").astype(float)
        except (ValueError, TypeError) as err:
            raise ResultsError(f"{what}: column {column!r} must be numeric (NaN where it does not apply): "
                               f"{err}") from None
    for column in TEXT_COLUMNS:
        out[column] = out[column].astype(object).where(out[column].notna(), "").astype(str)
    key = ["artefact", "test", "block", "role", "baseline", "task", "metric", "layer", "data_size"]
    dup = out[out.fillna({"layer": -1, "data_size": -1}).duplicated(key, keep=False)]
    if len(dup):
        raise ResultsError(f"{what} has several rows for the same {key}, e.g. "
                           f"{dup[key].head(2).to_dict('records')}")
    return out.reset_index(drop=True)


def save_results(cfg: Config, notebook: str, frame: pd.DataFrame | Sequence[pd.DataFrame]) -> Path:
    """Write ``frame`` (or the frames stacked) as ``figures/<profile>/results/<notebook>.csv``, its ``notebook``
    column filled with ``notebook``; checked by :func:`check_results`. Return the path."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        frames = list(frame)
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RESULT_COLUMNS))
    frame = frame.copy()
    if "notebook" in frame.columns:
        other = sorted(set(frame["notebook"].dropna().astype(str)) - {"", notebook})
        if other:
            raise ResultsError(f"rows of notebooks {other} given to save_results(..., {notebook!r}, ...)")
    frame["notebook"] = notebook
    checked = check_results(frame, f"results of {notebook}")
    out = results_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{notebook}.csv"
    for column in COUNT_COLUMNS:  # written as integers ("4", not "4.0"); read back as floats
        if (checked[column].dropna() % 1 == 0).all():
            checked[column] = checked[column].astype("Int64")
    checked.to_csv(path, index=False)
    return path


def load_results(cfg: Config, notebook: str | None = None) -> pd.DataFrame:
    """The tidy results of one notebook (its stem, ``04_blind_test``, or its number, ``04``), or of every notebook
    that wrote one (``None``; in file-name order). Empty, with the columns, when there are none."""
    import pandas as pd

    folder = results_dir(cfg)
    if notebook is None:
        paths = sorted(folder.glob("*.csv"))
    else:
        paths = [p for p in sorted(folder.glob("*.csv")) if p.stem == notebook or p.stem.split("_")[0] == notebook]
    frames = [check_results(_with_chance(pd.read_csv(p, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False,
                                                     na_values={c: [""] for c in NUMBER_COLUMNS})), str(p))
              for p in paths]
    if not frames:
        return check_results(pd.DataFrame(columns=list(RESULT_COLUMNS)))
    return pd.concat(frames, ignore_index=True)


def _with_chance(frame: pd.DataFrame) -> pd.DataFrame:
    """A results file written before the ``chance`` column existed, read with it empty."""
    return frame if "chance" in frame.columns else frame.assign(chance=float("nan"))


def tidy(frame: pd.DataFrame, **fields: object) -> pd.DataFrame:
    """``frame`` with every :data:`RESULT_COLUMNS` column: ``fields`` set as constants, the rest NaN."""
    out = frame.copy()
    for column, value in fields.items():
        out[column] = value
    for column in RESULT_COLUMNS:
        if column not in out.columns:
            out[column] = float("nan")
    return out[list(RESULT_COLUMNS)]


def accuracy_results(accuracy: pd.DataFrame, artefact: str, test: str, *, roles: Sequence[str] | None = None,
                     block: str = "", rule: str = "", split: str = "test", **where: str) -> pd.DataFrame:
    """Tidy rows of one paper table of ours from :func:`brdlib.evaluate.accuracy_table`'s frame, the same cells
    :func:`brdlib.evaluate.results_table` shows: ``roles`` (default all), the tasks of the paper's ``artefact``
    (rows picked by ``where``, e.g. ``setting="blind"``, or ``block``), and per role the ``average`` over them
    (NaN when the role lacks one, as the display leaves it empty). The average's chance level is the mean of its
    tasks'; its interval and ``n`` are ``accuracy``'s own ``average`` row's when that averages the same columns
    (Table 3's, from :func:`~brdlib.evaluate.accuracy_table`), else left empty."""
    import pandas as pd

    if block:
        where = {**where, "block": block}
    paper = paper_rows(artefact, **where)
    tasks = [t for t in dict.fromkeys(paper["task"]) if t != "average"]
    if roles is not None:
        accuracy = accuracy[accuracy["role"].isin(list(roles))]
    ours = accuracy[accuracy["task"].isin(tasks)]
    averaged = with_average(ours[["role", "task", "value"]], tasks)
    cells = _counts(ours)
    keep = [c for c in ("role", "task", "ci_low", "ci_high", "chance", "n", "n_tasks", "ties", "truncated")
            if c in cells.columns]
    cells = cells[keep]
    if "chance" in ours.columns:
        chance = ours.groupby("role", sort=False)["chance"].agg(["mean", "count"])
        means = chance["mean"].where(chance["count"] == len(tasks)).rename("chance").reset_index()
        average = means.assign(task="average")
        if set(tasks) == set(_table3_columns()) and (accuracy["task"] == "average").any():
            average = _counts(accuracy[accuracy["task"] == "average"])[keep]  # the interval resampled per task
        cells = pd.concat([cells, average], ignore_index=True)
    merged = averaged.merge(cells, on=["role", "task"], how="left")
    return tidy(merged, artefact=artefact, test=test, block=block, metric="accuracy", rule=rule, split=split)


def _table3_columns() -> list[str]:
    """The paper's Table 3 columns (what :func:`brdlib.evaluate.accuracy_table`'s ``average`` is the mean of)."""
    return [t for t in dict.fromkeys(paper_rows("table3")["task"]) if t != "average"]


def _counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy-table counts renamed to the tidy names, as floats (NaN where unknown)."""
    import pandas as pd

    out = frame.rename(columns={"n_ties": "ties", "n_truncated": "truncated"})
    for column in ("n", "n_tasks", "ties", "truncated"):
        if column in out.columns:
            out[column] = pd.to_numeric(out[column].astype(object).where(out[column].notna(), None),
                                        errors="coerce").astype(float)
    return out


def all_accuracies(accuracy: pd.DataFrame, test: str, *, rule: str = "", split: str = "test") -> pd.DataFrame:
    """Every row of :func:`brdlib.evaluate.accuracy_table`'s frame (each role and task, BIG-bench tasks one by one),
    tidy, with an empty ``artefact``: the notebook's full accuracy table, not one of the paper's."""
    counted = _counts(accuracy)
    keep = counted[[c for c in ("role", "task", "value", "ci_low", "ci_high", "chance", "n", "n_tasks", "ties",
                                "truncated") if c in counted.columns]]
    return tidy(keep, artefact="", test=test, metric="accuracy", rule=rule, split=split)


def paired_results(per_task: pd.DataFrame, artefact: str, test: str, role: str, baseline: str, *,
                   rule: str = "", split: str = "test") -> pd.DataFrame:
    """Tidy rows of :func:`brdlib.evaluate.paired_difference` (``task, n, delta, ci_low, ci_high``): metric
    ``accuracy_delta``, ``role`` minus ``baseline``."""
    rows = per_task[["task", "n", "delta", "ci_low", "ci_high"]].rename(columns={"delta": "value"})
    return tidy(_counts(rows), artefact=artefact, test=test, role=role, baseline=baseline,
                metric="accuracy_delta", rule=rule, split=split)


def cross_entropy_results(table: pd.DataFrame, delta: pd.DataFrame | None = None, *, role: str = "brd",
                          baseline: str = "student_base", split: str = "test") -> pd.DataFrame:
    """Tidy Table 5 rows from :func:`brdlib.cross_entropy.cross_entropy_table` (the sum per role and task, with ``n``
    texts; and the mean per text with its interval), and, given, :func:`brdlib.cross_entropy.cross_entropy_difference`'s
    ``role`` minus ``baseline`` per task."""
    import pandas as pd

    common = {"artefact": "table5", "test": "cross_entropy", "split": split}
    sums = tidy(_counts(table[["role", "task", "value", "n"]]), metric="cross_entropy", **common)
    per = table[["role", "task", "per_text", "per_text_ci_low", "per_text_ci_high", "n"]].rename(
        columns={"per_text": "value", "per_text_ci_low": "ci_low", "per_text_ci_high": "ci_high"})
    frames = [sums, tidy(_counts(per), metric="cross_entropy_per_text", **common)]
    if delta is not None:
        rows = delta[["task", "n", "delta", "ci_low", "ci_high"]].rename(columns={"delta": "value"})
        frames.append(tidy(_counts(rows), role=role, baseline=baseline, metric="cross_entropy_delta", **common))
    return pd.concat(frames, ignore_index=True)


def probing_results(probes: pd.DataFrame) -> pd.DataFrame:
    """Tidy Figure 4 rows from :func:`brdlib.probing.probe_models`: each role, task and layer's probe test
    accuracy, ``n`` its test examples."""
    rows = probes[["role", "task", "layer", "test_accuracy", "n_test"]].rename(
        columns={"test_accuracy": "value", "n_test": "n"})
    return tidy(_counts(rows), artefact="figure4", test="probing", metric="probe_accuracy", split="test")


def data_size_results(curve: pd.DataFrame, *, rule: str = "", split: str = "test") -> pd.DataFrame:
    """Tidy Figure 2 rows from :func:`brdlib.data_size.data_size_frame`: per student (``role``) and task its blind
    accuracy, ``data_size`` its BRD passages (0: the base student), and the ``average`` over the paper's columns."""
    columns = [c for c in ("student", "passages", "task", "value", "ci_low", "ci_high", "chance", "n", "n_tasks",
                           "n_ties", "n_truncated") if c in curve.columns]
    rows = _counts(curve[columns]).rename(columns={"student": "role", "passages": "data_size"})
    return tidy(rows, artefact="figure2", test="blind", metric="accuracy", rule=rule, split=split)
