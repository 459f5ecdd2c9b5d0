"""The tidy results files (brdlib.results): the schema is enforced, and they hold the numbers the display tables
show."""

import re

import numpy as np
import pandas as pd
import pytest

from brdlib.config import load_config
from brdlib.evaluate import results_table
from brdlib.results import (
    METRICS,
    RESULT_COLUMNS,
    ResultsError,
    accuracy_results,
    all_accuracies,
    cross_entropy_results,
    data_size_results,
    load_results,
    paired_results,
    probing_results,
    save_results,
    tidy,
)

TASKS = ["xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench_avg"]


@pytest.fixture
def cfg(tmp_path):
    return load_config("tiny", [f"output_root={tmp_path}"])


def _accuracy(values: dict[str, float], tasks=TASKS) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"role": role, "task": t, "value": v + rng.uniform(-3, 3), "n": 10 + i, "n_tasks": 1,
             "ci_low": v - 5, "ci_high": v + 5, "n_ties": i % 2, "n_truncated": None}
            for role, v in values.items() for i, t in enumerate(tasks)]
    return pd.DataFrame(rows).astype({"n_ties": "Int64", "n_truncated": "Int64"})


def _cells(rows: pd.DataFrame, decimals: int) -> dict[tuple[str, str], float]:
    """(role, task) -> value rounded as the display tables round (pandas, i.e. numpy's rounding, not Python's)."""
    rows = rows.dropna(subset=["value"])
    return dict(zip(zip(rows["role"], rows["task"], strict=True), rows["value"].round(decimals), strict=True))


def _ours(wide: pd.DataFrame, profile: str) -> dict[tuple[str, str], float]:
    """The display table's ``<task>: ours (<profile>)`` cells (the test reads the view; the library never does)."""
    out = {}
    for column in wide.columns:
        m = re.fullmatch(rf"(.+): ours \({re.escape(profile)}\)", column)
        if m:
            out.update({(r, m[1]): float(v) for r, v in zip(wide["role"], wide[column], strict=True) if pd.notna(v)})
    return out


def test_results_module_imports_no_stage():
    """A low-floor module: brdlib.config and brdlib.report only, so any stage may write results."""
    import ast
    import inspect

    import brdlib.results

    tree = ast.parse(inspect.getsource(brdlib.results))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("brdlib")} <= {"brdlib.config", "brdlib.report"}


def test_save_refuses_a_frame_with_a_missing_column_or_an_unknown_metric(cfg):
    good = tidy(pd.DataFrame({"role": ["brd"], "task": ["rte"], "value": [50.0]}), artefact="table3", test="blind",
                metric="accuracy")
    with pytest.raises(ResultsError, match=r"lacks columns \['ci_low'\]"):
        save_results(cfg, "04_blind_test", good.drop(columns="ci_low"))
    with pytest.raises(ResultsError, match="unknown metrics \\['accuracy_percent'\\]"):
        save_results(cfg, "04_blind_test", good.assign(metric="accuracy_percent"))
    with pytest.raises(ResultsError, match="'ours \\(tiny\\)'"):
        save_results(cfg, "04_blind_test", good.assign(**{"ours (tiny)": 1.0}))
    with pytest.raises(ResultsError, match="several rows"):
        save_results(cfg, "04_blind_test", pd.concat([good, good]))
    with pytest.raises(ResultsError, match="'value' must be numeric"):
        save_results(cfg, "04_blind_test", good.assign(value="fifty"))
    assert not (cfg.figures_dir / "results").exists() or not list((cfg.figures_dir / "results").glob("*.csv"))
    # a hand-edited file with an unknown metric is refused on reading too, naming the file
    path = save_results(cfg, "04_blind_test", good)
    path.write_text(path.read_text().replace(",accuracy,", ",acc,"))
    with pytest.raises(ResultsError, match=r"04_blind_test\.csv has unknown metrics \['acc'\]"):
        load_results(cfg)


def test_results_round_trip_and_are_found_by_notebook(cfg):
    acc = _accuracy({"brd": 60.0, "student_base": 50.0})
    frame = pd.concat([all_accuracies(acc, "blind", rule="mean"),
                       accuracy_results(acc, "table3", "blind", rule="mean", setting="blind")])
    save_results(cfg, "04_blind_test", frame)
    save_results(cfg, "06_supervised", accuracy_results(acc, "table3", "supervised", rule="mean",
                                                        split="heldout", setting="supervised"))
    back = load_results(cfg, "04")
    assert list(back.columns) == list(RESULT_COLUMNS) and set(back["notebook"]) == {"04_blind_test"}
    assert len(back) == len(frame) and set(back["metric"]) <= METRICS
    brd = back[(back["artefact"] == "table3") & (back["role"] == "brd")].set_index("task")
    assert brd.loc["rte", "value"] == acc.query("role == 'brd' and task == 'rte'")["value"].item()  # unrounded
    assert brd.loc["cb", "ties"] == 0 and np.isnan(brd.loc["cb", "truncated"]) and brd.loc["cb", "n"] == 12
    assert np.isnan(brd.loc["average", "n"])  # the average has no interval or n of its own
    assert set(load_results(cfg)["notebook"]) == {"04_blind_test", "06_supervised"}
    assert set(load_results(cfg, "06_supervised")["split"]) == {"heldout"}
    assert load_results(cfg, "09").empty and list(load_results(cfg, "09").columns) == list(RESULT_COLUMNS)


@pytest.mark.parametrize(("table", "where", "roles"), [
    ("table3", {"setting": "blind"}, None),
    ("table12", {}, ["brd", "student_base"]),
    ("table4", {"block": "GPT-2 760M"}, ["skd", "skd_brd"]),
])
def test_tidy_rows_hold_the_numbers_the_display_table_shows(cfg, table, where, roles):
    acc = _accuracy({"brd": 60.0, "student_base": 50.0, "skd": 55.0, "skd_brd": 56.0, "extra_row": 40.0})
    acc = acc[~((acc["role"] == "extra_row") & (acc["task"] == "cb"))]  # a role lacking a column: no average
    wide = results_table(cfg, acc, table, roles=roles, **where)
    block = where.pop("block", "")
    rows = accuracy_results(acc, table, "blind", roles=roles, block=block, **where)
    shown = _ours(wide, cfg.profile)
    assert _cells(rows, 1) == shown
    n = {(r.role, t): int(v) for t in {t for _, t in shown if t != "average"}
         for r, v in zip(wide.itertuples(), wide[f"{t}: n"], strict=True) if pd.notna(v)}
    assert {(r.role, r.task): int(r.n) for r in rows.itertuples() if r.task != "average"} == n


def test_cross_entropy_probing_and_data_size_rows(cfg):
    from brdlib.cross_entropy import table5
    from brdlib.data_size import data_size_table

    ce = pd.DataFrame([{"role": r, "task": t, "value": v + i, "n": 5, "per_text": (v + i) / 5,
                        "per_text_ci_low": 0.1, "per_text_ci_high": 0.9}
                       for r, v in [("brd", 10.0), ("student_base", 12.345)] for i, t in enumerate(TASKS)])
    delta = pd.DataFrame({"task": TASKS, "n": 5, "delta": -2.345, "ci_low": -3.0, "ci_high": -1.0, "relative_%": -19})
    rows = cross_entropy_results(ce, delta)
    save_results(cfg, "07_cross_entropy", rows)
    sums = rows[rows["metric"] == "cross_entropy"]
    assert _cells(sums, 2) == _ours(table5(cfg, ce), cfg.profile)
    assert set(rows[rows["metric"] == "cross_entropy_delta"]["baseline"]) == {"student_base"}

    probes = pd.DataFrame([{"role": r, "model": "m", "task": "rte", "layer": k, "C": 1.0, "tune_accuracy": 50.0,
                            "test_accuracy": 50.0 + k, "n_train": 8, "n_tune": 4, "n_test": 4, "majority": 50.0}
                           for r in ("brd", "student_base") for k in range(3)])
    save_results(cfg, "08_probing", probing_results(probes))
    assert load_results(cfg, "08").set_index(["role", "layer"]).loc[("brd", 2.0), "value"] == 52.0

    curve = pd.DataFrame([{"student": s, "fraction": f, "passages": p, "tokens": 10 * p, "steps": p, "task": t,
                           "value": 40.0 + p + i, "n": 10, "n_tasks": 1, "ci_low": 1.0, "ci_high": 2.0}
                          for s, f, p in [("student_base", 0.0, 0), ("brd_frac0.5", 0.5, 5), ("brd", 1.0, 10)]
                          for i, t in enumerate(TASKS)])
    rows = data_size_results(curve, rule="mean")
    save_results(cfg, "09_data_size", rows)
    wide = data_size_table(curve, cfg.profile)
    shown = {(s, c.split(":")[0]): v for c in wide.columns if c.endswith(f"ours ({cfg.profile})")
             for s, v in zip(wide["student"], wide[c], strict=True)}
    assert _cells(rows, 1) == shown
    assert sorted(set(load_results(cfg, "09")["data_size"])) == [0.0, 5.0, 10.0]


def test_paired_rows():
    per_task = pd.DataFrame({"task": ["a", "b"], "n": [4, 5], "brd": [50.0, 60.0], "student_base": [40.0, 60.0],
                             "delta": [10.0, 0.0], "ci_low": [-5.0, -1.0], "ci_high": [20.0, 1.0],
                             "outcome": ["better", "tied"]})
    rows = paired_results(per_task, "figure3", "blind", "brd", "student_base", rule="mean")
    assert list(rows["value"]) == [10.0, 0.0] and set(rows["metric"]) == {"accuracy_delta"}
    assert set(rows["baseline"]) == {"student_base"} and list(rows["n"]) == [4.0, 5.0]


DISPLAY_TABLES = {  # display table -> the tidy rows it shows (artefact, test), and its rounding
    "04_table3_blind": ("table3", "blind", 1), "04_table12": ("table12", "blind", 1),
    "04_table7": ("table7", "blind", 1), "04_table6": ("table6", "blind", 1), "04_table4_kd": ("table4", "blind", 1),
    "05_table3_relaxed": ("table3", "relaxed", 1), "05_table4_taskdistillation": ("table4", "relaxed", 1),
    "05_table8": ("table8", "relaxed", 1), "05_table11": ("table11", "relaxed", 1),
    "05_table10": ("table10", "relaxed", 1), "06_table3_supervised": ("table3", "supervised", 1),
    "06_table10": ("table10", "supervised", 1), "07_table5": ("table5", "cross_entropy", 2),
}


@pytest.mark.slow
def test_every_notebook_writes_tidy_results_that_agree_with_its_display_tables(tiny_study):
    tiny_study.executed("10_paper_tables")
    cfg = tiny_study.config()
    results = load_results(cfg)  # every file passes the schema check
    assert sorted(set(results["notebook"])) == ["04_blind_test", "05_relaxed_test", "06_supervised",
                                                "07_cross_entropy", "08_probing", "09_data_size"]
    for stem, (artefact, test, decimals) in DISPLAY_TABLES.items():
        metric = "cross_entropy" if artefact == "table5" else "accuracy"
        rows = results[(results["artefact"] == artefact) & (results["test"] == test) & (results["metric"] == metric)]
        if artefact == "table5":  # the tidy file also keeps each BIG-bench task behind bigbench_avg
            rows = rows[~rows["task"].str.startswith("bigbench:")]
        path = tiny_study.figures / f"{stem}.csv"
        if not path.is_file():  # a part the profile skips writes neither
            assert rows.empty, stem
            continue
        wide = pd.read_csv(path)
        assert _cells(rows, decimals) == _ours(wide, cfg.profile), stem
    probes = pd.read_csv(tiny_study.figures / "08_probing.csv")
    tidy_probes = results[results["metric"] == "probe_accuracy"]
    assert len(tidy_probes) == len(probes)
    assert np.allclose(tidy_probes["value"].round(2), probes["test_accuracy"])
