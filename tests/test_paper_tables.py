"""Notebook 10's gathering of saved tables, and the paper-comparison checks, on hand-made tables."""

import pandas as pd
import pytest

from brdlib.config import load_config
from brdlib.evaluate import results_table
from brdlib.paper_tables import (
    ARTEFACTS,
    agreement_summary,
    artefact_agreement,
    artefact_index,
    claim_checks,
    load_ours,
    ours_by_file,
    ours_from_wide,
    table3_averages,
    table3_figure,
)
from brdlib.report import paper_table, save_table

TASKS = ["xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench_avg"]


@pytest.fixture
def cfg(tmp_path):
    return load_config("tiny", [f"output_root={tmp_path}"])


def _accuracy(values: dict[str, float]) -> pd.DataFrame:
    rows = [{"role": role, "task": t, "value": v, "n": 10, "n_tasks": 1, "ci_low": v - 5, "ci_high": v + 5}
            for role, v in values.items() for t in TASKS]
    return pd.DataFrame(rows)


def test_ours_round_trips_through_a_saved_side_by_side_table(cfg):
    acc = _accuracy({"brd": 60.0, "student_base": 50.0})
    save_table(results_table(cfg, acc, "table3", setting="blind"), cfg, "04_table3_blind")
    ours = ours_from_wide(cfg.figures_dir / "04_table3_blind.csv", "tiny")
    assert set(ours["role"]) == {"brd", "student_base"}
    assert ours.query("role == 'brd' and task == 'rte'")["value"].item() == 60.0
    assert ours.query("role == 'brd' and task == 'average'")["value"].item() == 60.0


def test_claim_checks_read_the_direction_from_the_paper(cfg):
    # the paper has BRD above the base student on Table 3's average; ours below -> "no"; above -> "yes"
    paper = paper_table("table3")
    avg = paper[(paper["task"] == "average") & paper["role"].isin(["brd", "student_base"])].set_index("role")["value"]
    assert avg["brd"] > avg["student_base"]
    for ours_brd, expected in [(40.0, "no"), (70.0, "yes")]:
        save_table(results_table(cfg, _accuracy({"brd": ours_brd, "student_base": 50.0}), "table3", setting="blind"),
                   cfg, "04_table3_blind")
        checks = claim_checks(cfg)
        row = checks[(checks["table"] == "table3") & (checks["comparison"] == "brd − student_base")].iloc[0]
        assert row["same direction"] == expected
        assert row["paper Δ"] == pytest.approx(avg["brd"] - avg["student_base"])
        assert row[f"ours ({cfg.profile}) Δ"] == pytest.approx(ours_brd - 50.0)
    # rows not run stay 'not run', and the summary counts only what ran
    assert (checks[checks["table"] == "table8"]["same direction"] == "not run").all()
    assert agreement_summary(checks).startswith("1 of 1 comparisons")


def test_average_falls_back_to_the_mean_of_the_papers_columns(cfg):
    # Table 5 has no Average column: the comparison uses the mean over its tasks, for the paper and for ours
    rows = [{"role": r, "task": t, "value": v} for r, v in [("brd", 10.0), ("student_base", 20.0)]
            for t in ["xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench_avg"]]
    from brdlib.report import compare_with_paper

    save_table(compare_with_paper(pd.DataFrame(rows), "table5", "tiny"), cfg, "07_table5")
    checks = claim_checks(cfg)
    row = checks[checks["table"] == "table5"].iloc[0]
    assert row[f"ours ({cfg.profile}) Δ"] == pytest.approx(-10.0)
    assert row["same direction"] in ("yes", "no")


def test_index_agreement_and_figure(cfg):
    save_table(results_table(cfg, _accuracy({"brd": 60.0, "student_base": 50.0}), "table3", setting="blind"),
               cfg, "04_table3_blind")
    index = artefact_index(cfg)
    assert len(index) == len(ARTEFACTS)
    assert index.loc[index["paper"] == "Table 3", "files"].item() == "04_table3_blind.csv"
    agreement = artefact_agreement(cfg)
    t3 = agreement[agreement["paper"] == "Table 3"].iloc[0]
    assert t3["cells beside the paper's"] == 16  # 2 rows x (7 tasks + average)
    assert t3["comparisons same direction"] == "1 of 1"
    fig = table3_figure(cfg)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and legends[0] is fig.axes[-1].get_legend()  # one legend, beside the last panel
    assert [t.get_text() for t in legends[0].get_texts()] == [f"ours ({cfg.profile})", "paper"]


def test_blind_reference_rows_are_not_replaced_by_the_protocol_blocks(cfg):
    # 05/06 repeat student_base and brd, scored on the protocols' held-out split: Table 3's comparisons and the
    # blind panel of the figure keep the blind numbers; each block's panel shows its own
    save_table(results_table(cfg, _accuracy({"brd": 60.0, "student_base": 50.0}), "table3", setting="blind"),
               cfg, "04_table3_blind")
    save_table(results_table(cfg, _accuracy({"sft": 70.0, "brd2_sft": 72.0, "student_base": 40.0, "brd": 41.0}),
                             "table3", setting="supervised"), cfg, "06_table3_supervised")
    art = next(a for a in ARTEFACTS if a.reference == "table3")
    ours = load_ours(cfg, art).set_index(["role", "task"])["value"]
    assert ours[("brd", "average")] == 60.0 and ours[("student_base", "average")] == 50.0
    assert ours[("sft", "average")] == 70.0
    by_file = ours_by_file(cfg, art)
    assert set(by_file.query("role == 'brd' and task == 'average'")["value"]) == {60.0, 41.0}
    checks = claim_checks(cfg)
    row = checks[(checks["table"] == "table3") & (checks["comparison"] == "brd − student_base")].iloc[0]
    assert row[f"ours ({cfg.profile}) Δ"] == pytest.approx(10.0)
    fig = table3_figure(cfg)
    blind_axis = next(ax for ax in fig.axes if ax.get_title() == "blind")
    heights = sorted(round(b.get_height(), 1) for b in blind_axis.patches if b.get_height() == b.get_height())
    assert 60.0 in heights and 50.0 in heights and 41.0 not in heights

    averages = table3_averages(cfg).set_index(["test", "role"])
    assert averages.loc[("blind", "brd"), f"ours ({cfg.profile})"] == 60.0
    assert averages.loc[("supervised", "brd"), f"ours ({cfg.profile})"] == 41.0
    sft = averages.loc[("supervised", "sft")]
    assert sft["delta"] == pytest.approx(70.0 - sft["paper"])
    assert averages.loc[("blind", "large_baseline"), "model (paper)"] == "XGLM-7.5B"  # the paper's rows we lack too
