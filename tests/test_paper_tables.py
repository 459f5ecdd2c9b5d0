"""Notebook 10's gathering of the tidy results, and the paper-comparison checks, on hand-made results."""

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
    ours_by_block,
    table3_averages,
    table3_figure,
)
from brdlib.report import paper_table, save_table
from brdlib.results import accuracy_results, load_results, save_results

TASKS = ["xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench_avg"]


@pytest.fixture
def cfg(tmp_path):
    return load_config("tiny", [f"output_root={tmp_path}"])


def _accuracy(values: dict[str, float]) -> pd.DataFrame:
    rows = [{"role": role, "task": t, "value": v, "n": 10, "n_tasks": 1, "ci_low": v - 5, "ci_high": v + 5}
            for role, v in values.items() for t in TASKS]
    return pd.DataFrame(rows)


TABLE3 = next(a for a in ARTEFACTS if a.reference == "table3")


def _save(cfg, notebook: str, acc: pd.DataFrame, table: str = "table3", test: str = "blind", **where) -> None:
    """What notebooks 04-06 write: the tidy rows of one table (no display table)."""
    save_results(cfg, notebook, accuracy_results(acc, table, test, rule="mean", **where))


def test_ours_are_read_from_the_tidy_results(cfg):
    acc = _accuracy({"brd": 60.04, "student_base": 50.0})
    _save(cfg, "04_blind_test", acc, setting="blind")
    assert not list(cfg.figures_dir.glob("*.csv"))  # no display table to parse
    ours = load_ours(cfg, TABLE3)
    assert set(ours["role"]) == {"brd", "student_base"}
    assert ours.query("role == 'brd' and task == 'rte'")["value"].item() == 60.0  # as the display shows it
    assert ours.query("role == 'brd' and task == 'average'")["value"].item() == 60.0
    assert load_results(cfg)["value"].max() == pytest.approx(60.04)  # the file keeps the unrounded value


def test_a_renamed_display_column_does_not_change_what_notebook_10_reads(cfg):
    # notebook 10 once parsed the display columns '<task>: ours (<profile>)'; a caption change made every table
    # silently 'not run'. Now the display tables are views and may be captioned as they like.
    acc = _accuracy({"brd": 70.0, "student_base": 50.0})
    wide = results_table(cfg, acc, "table3", setting="blind")
    save_table(wide.rename(columns=lambda c: c.replace(f"ours ({cfg.profile})", "this run")), cfg, "04_table3_blind")
    _save(cfg, "04_blind_test", acc, setting="blind")
    checks = claim_checks(cfg)
    row = checks[(checks["table"] == "table3") & (checks["comparison"] == "brd − student_base")].iloc[0]
    assert row[f"ours ({cfg.profile}) Δ"] == pytest.approx(20.0) and row["same direction"] == "yes"
    assert table3_averages(cfg).set_index(["test", "role"]).loc[("blind", "brd"), f"ours ({cfg.profile})"] == 70.0


def test_comparisons_are_not_repeated():
    from brdlib.paper_tables import COMPARISONS

    assert len(set(COMPARISONS)) == len(COMPARISONS)


def test_claim_checks_read_the_direction_from_the_paper(cfg):
    # the paper has BRD above the base student on Table 3's average; ours below -> "no"; above -> "yes"
    paper = paper_table("table3")
    avg = paper[(paper["task"] == "average") & paper["role"].isin(["brd", "student_base"])].set_index("role")["value"]
    assert avg["brd"] > avg["student_base"]
    for ours_brd, expected in [(40.0, "no"), (70.0, "yes")]:
        _save(cfg, "04_blind_test", _accuracy({"brd": ours_brd, "student_base": 50.0}), setting="blind")
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
    from brdlib.results import tidy

    save_results(cfg, "07_cross_entropy", tidy(pd.DataFrame(rows), artefact="table5", test="cross_entropy",
                                               metric="cross_entropy"))
    checks = claim_checks(cfg)
    row = checks[checks["table"] == "table5"].iloc[0]
    assert row[f"ours ({cfg.profile}) Δ"] == pytest.approx(-10.0)
    assert row["same direction"] in ("yes", "no")


def test_index_agreement_and_figure(cfg):
    acc = _accuracy({"brd": 60.0, "student_base": 50.0})
    save_table(results_table(cfg, acc, "table3", setting="blind"), cfg, "04_table3_blind")  # the index lists views
    _save(cfg, "04_blind_test", acc, setting="blind")
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
    # the supervised notebook's file sorts first by name: the rule is the test's priority, not the file order
    _save(cfg, "00_supervised", _accuracy({"sft": 70.0, "brd2_sft": 72.0, "student_base": 40.0, "brd": 41.0}),
          test="supervised", split="heldout", setting="supervised")
    _save(cfg, "04_blind_test", _accuracy({"brd": 60.0, "student_base": 50.0}), setting="blind")
    ours = load_ours(cfg, TABLE3).set_index(["role", "task"])["value"]
    assert ours[("brd", "average")] == 60.0 and ours[("student_base", "average")] == 50.0
    assert ours[("sft", "average")] == 70.0
    by_block = ours_by_block(cfg, TABLE3)
    assert list(by_block.query("role == 'brd' and task == 'average'")["value"]) == [60.0, 41.0]
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
