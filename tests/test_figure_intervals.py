"""Every figure of ours that compares accuracies draws a 95% interval on each bar or point of ours, the chance
level, and n; Table 3's Average gets its interval by resampling examples within each task."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from brdlib import blind, data_size, probing, protocols  # noqa: E402
from brdlib.config import load_config  # noqa: E402
from brdlib.evaluate import TABLE_TASKS, accuracy_table  # noqa: E402
from brdlib.paper_tables import table3_averages, table3_figure  # noqa: E402
from brdlib.report import CHANCE_GID, paper_rows, side_by_side_figure  # noqa: E402
from brdlib.results import accuracy_results, load_results, save_results  # noqa: E402

BIGBENCH = ["bigbench:a", "bigbench:b"]
CANDIDATES = {"xnli": 3, "rte": 2, "cb": 3, "pawsx": 2, "boolq": 2, "sst2": 2, "bigbench:a": 4, "bigbench:b": 5}


@pytest.fixture
def cfg(tmp_path):
    return load_config("tiny", [f"output_root={tmp_path}", "eval.bootstrap_samples=400"])


def _predictions(roles=("brd", "student_base"), n: int = 16, seed: int = 0) -> pd.DataFrame:
    """Hand-made predictions on the Table 3 columns (two BIG-bench tasks): each role right on a random share."""
    rng = np.random.default_rng(seed)
    rows = [{"role": r, "task": t, "example_id": str(i), "n_candidates": k, "correct_mean": bool(rng.random() < 0.6),
             "correct_sum": bool(rng.random() < 0.5)}
            for r in roles for t, k in CANDIDATES.items() for i in range(n)]
    return pd.DataFrame(rows)


def _checked(ax, n_text: str) -> None:
    """The axis has error bars, a chance line, and n where its labels or title show it."""
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers), "no error bars"
    assert [a for a in [*ax.collections, *ax.lines] if a.get_gid() == CHANCE_GID], "no chance line"
    shown = " ".join([ax.get_title(), ax.figure._suptitle.get_text() if ax.figure._suptitle else "",
                      *(t.get_text() for t in ax.get_xticklabels()), *(t.get_text() for t in ax.get_yticklabels())])
    assert n_text in shown, f"{n_text!r} not in {shown!r}"


def test_table_average_interval_resamples_within_tasks(cfg):
    acc = accuracy_table(cfg, _predictions()).set_index(["role", "task"])
    row = acc.loc[("brd", "average")]
    columns = acc.loc["brd"].loc[list(TABLE_TASKS)]
    assert row["value"] == pytest.approx(columns["value"].mean())
    assert row["chance"] == pytest.approx(columns["chance"].mean())
    assert acc.loc[("brd", "rte"), "chance"] == 50.0 and acc.loc[("brd", "bigbench_avg"), "chance"] == 22.5
    assert row["n"] == 16 * 8 and row["n_tasks"] == 8
    assert row["ci_low"] < row["value"] < row["ci_high"]
    # seven columns' errors combine: about 1/sqrt(7) of one column's width, not the mean of the columns' widths
    width, column_width = row["ci_high"] - row["ci_low"], (columns["ci_high"] - columns["ci_low"]).mean()
    assert 0.25 * column_width < width < 0.6 * column_width
    assert "average" not in set(accuracy_table(cfg, _predictions(), table_average=False)["task"])
    lacking = _predictions()[lambda d: d["task"] != "cb"]
    assert "average" not in set(accuracy_table(cfg, lacking)["task"])


def test_tidy_averages_carry_the_interval_only_where_it_was_resampled(cfg):
    acc = accuracy_table(cfg, _predictions())
    t3 = accuracy_results(acc, "table3", "blind", setting="blind").set_index(["role", "task"])
    mine = acc.set_index(["role", "task"]).loc[("brd", "average")]
    assert t3.loc[("brd", "average"), "ci_low"] == pytest.approx(mine["ci_low"])
    assert t3.loc[("brd", "average"), "n"] == mine["n"]
    t12 = accuracy_results(acc, "table12", "blind").set_index(["role", "task"])  # six columns: no resampled CI
    assert np.isnan(t12.loc[("brd", "average"), "ci_low"])
    six = acc[acc["task"].isin(["xnli", "rte", "cb", "pawsx", "boolq", "sst2"]) & (acc["role"] == "brd")]
    assert t12.loc[("brd", "average"), "chance"] == pytest.approx(six["chance"].mean())


def test_table3_side_by_side_figure(cfg):
    acc = accuracy_table(cfg, _predictions())
    paper = paper_rows("table3", setting="blind")
    ours = acc[acc["task"].isin([*paper["task"], "average"])]
    fig = side_by_side_figure(ours, paper, "tiny", title="Table 3")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    for role in ("brd", "student_base"):
        _checked(panels[role], "n=16")
        bars = next(c for c in panels[role].containers if isinstance(c, ErrorbarContainer))
        assert len(bars.lines[2][0].get_segments()) == 8  # seven columns and the average
    assert "n=128" in " ".join(t.get_text() for t in panels["brd"].get_xticklabels())  # the average's n
    teacher = panels["teacher"]  # a row only the paper has: its bars, no interval, each task's chance level
    assert not any(isinstance(c, ErrorbarContainer) for c in teacher.containers)
    assert [c for c in teacher.collections if c.get_gid() == CHANCE_GID]
    plt.close(fig)


def test_protocol_figure(cfg):
    fig = protocols.protocol_figure(cfg, _predictions(("brd2", "task_distillation")), ["task_distillation", "brd2"])
    ax = fig.axes[0]
    _checked(ax, "n=16")
    assert sum(len(c.lines[2][0].get_segments()) for c in ax.containers if isinstance(c, ErrorbarContainer)) == 16
    plt.close(fig)


def test_bigbench_figure(cfg):
    per_task = blind.bigbench_per_task(cfg, _predictions())
    assert {"brd ci_low", "student_base ci_high", "chance"} <= set(per_task.columns)
    fig = blind.bigbench_figure(per_task)
    _checked(fig.axes[0], "n=16")
    plt.close(fig)


def test_data_size_figure(cfg):
    plan = pd.DataFrame({"student": ["brd"], "fraction": [1.0], "passages": [10], "tokens": [1000], "steps": [4]})
    curve = data_size.data_size_frame(plan, accuracy_table(cfg, _predictions()))
    assert curve[curve["task"] == "average"]["ci_low"].notna().all()  # accuracy_table's resampled interval
    fig = data_size.data_size_figure(curve)
    shown = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in shown][-1] == "average (n=128)"
    for ax in shown:
        _checked(ax, "n=")
    plt.close(fig)


def test_probing_figure():
    probes = pd.DataFrame([{"role": r, "task": t, "layer": k, "test_accuracy": 50.0 + k, "n_test": 40,
                            "majority": 55.0} for r in ("brd", "student_base") for t in ("rte", "cb")
                           for k in range(3)])
    fig = probing.probing_figure(probes, title="Figure 4")
    for ax in (a for a in fig.axes if a.get_title()):
        _checked(ax, "n=40")
    plt.close(fig)


def test_table3_averages_figure(cfg):
    acc = accuracy_table(cfg, _predictions())
    save_results(cfg, "04_blind_test", accuracy_results(acc, "table3", "blind", rule="mean", setting="blind"))
    assert load_results(cfg)["chance"].notna().any()
    fig = table3_figure(cfg)
    _checked(next(ax for ax in fig.axes if ax.get_title() == "blind"), "n=128")
    averages = table3_averages(cfg).set_index(["test", "role"])
    assert averages.loc[("blind", "brd"), "95% CI"].startswith("[") and averages.loc[("blind", "brd"), "n"] == 128
    plt.close(fig)
