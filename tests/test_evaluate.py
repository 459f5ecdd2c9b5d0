"""brdlib.evaluate and brdlib.blind: the rules end to end, bootstrap intervals, accuracy tables with hand-made
predictions, results tables beside the paper, cached re-evaluation, and notebook 04 on the tiny profile."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pandas as pd
import pytest

import brdlib.scoring
from brdlib import blind
from brdlib.config import load_config
from brdlib.evaluate import (
    BIGBENCH_AVG,
    EvaluateError,
    accuracy_table,
    bootstrap_ci,
    evaluate_model,
    evaluate_models,
    load_predictions,
    paired_difference,
    results_table,
)
from brdlib.report import paper_rows
from brdlib.runner import NOTEBOOK_DIR
from brdlib.scoring import CandidateScore

TASKS = ["rte", "sst2"]


@pytest.fixture
def cfg(tmp_path):
    return load_config("tiny", [f"output_root={tmp_path}", "eval.bootstrap_samples=400"])


def _frame(rows: list[tuple[str, str, bool]]) -> pd.DataFrame:
    """A predictions frame from (role, task, correct) rows; the sum rule gets the opposite outcome."""
    return pd.DataFrame([{"role": r, "task": t, "example_id": str(i), "correct_mean": c, "correct_sum": not c}
                         for i, (r, t, c) in enumerate(rows)])


# The rules, end to end through evaluate ------------------------------------------------------------------------


def test_mean_and_sum_rules_pick_different_candidates_through_evaluate(cfg, monkeypatch):
    """Candidate 0 has the better mean (-1 over 3 tokens), candidate 1 the better sum (-2 over 1 token): the mean
    rule's accuracy is the share of gold 0, the sum rule's the share of gold 1, whatever the model."""

    def fake(model, tokenizer, groups, batch_size=8, progress=False, **reading):
        return [[CandidateScore(-3.0, 3), CandidateScore(-2.0, 1), *[CandidateScore(-50.0, 1)] * (len(c) - 2)]
                for _, c in groups]

    monkeypatch.setattr(brdlib.scoring, "score_candidates", fake)
    preds = evaluate_model(cfg, "student", "student_base", TASKS, progress=False)
    assert (preds["pred_mean"] == 0).all() and (preds["pred_sum"] == 1).all()
    acc = accuracy_table(cfg, preds).set_index("task")
    acc_sum = accuracy_table(cfg, preds, rule="sum").set_index("task")
    for task, frame in preds.groupby("task"):
        assert acc.loc[task, "value"] == pytest.approx(100 * (frame["gold"] == 0).mean())
        assert acc_sum.loc[task, "value"] == pytest.approx(100 * (frame["gold"] == 1).mean())
        assert acc.loc[task, "n"] == len(frame) == 4
    with pytest.raises(EvaluateError, match="accepted: 'mean', 'sum'"):
        accuracy_table(cfg, preds, rule="max")


def test_real_tiny_model_predictions_follow_their_scores(cfg):
    preds = evaluate_model(cfg, "student", tasks=TASKS, progress=False)
    for row in preds.itertuples():
        assert row.pred_mean == int(np.argmax(row.mean_logprobs)) and row.pred_sum == int(np.argmax(row.sum_logprobs))
        assert all(m == pytest.approx(s / n) for m, s, n in zip(row.mean_logprobs, row.sum_logprobs, row.n_tokens,
                                                                 strict=True))
    assert (preds["role"] == "student").all() and (preds["model"] == "tiny-random:0").all()


# Bootstrap -------------------------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200, 2000):
        correct = rng.random(n) < 0.7
        low, high = bootstrap_ci(correct, samples=1000)
        assert low <= correct.mean() <= high and 0 <= low < high <= 1
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.05  # ~ 2 * 1.96 * sqrt(.21 / 2000) = 0.04
    assert bootstrap_ci([True] * 10) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


# Accuracy tables -------------------------------------------------------------------------------------------------


def test_accuracy_table_exact_values_and_bigbench_average_of_tasks(cfg):
    rows = [("brd", "rte", c) for c in (True, True, True, False)]  # 75%
    rows += [("brd", "bigbench:a", c) for c in (True, False)]  # 50%, 2 examples
    rows += [("brd", "bigbench:b", c) for c in [True] * 8]  # 100%, 8 examples
    rows += [("base", "rte", c) for c in (False, False, True, False)]  # 25%
    acc = accuracy_table(cfg, _frame(rows)).set_index(["role", "task"])
    assert acc.loc[("brd", "rte"), "value"] == 75 and acc.loc[("brd", "rte"), "n"] == 4
    assert acc.loc[("base", "rte"), "value"] == 25
    avg = acc.loc[("brd", BIGBENCH_AVG)]
    assert avg["value"] == 75  # the mean of 50 and 100, not the pooled 9/10
    assert avg["n"] == 10 and avg["n_tasks"] == 2
    assert avg["ci_low"] <= 75 <= avg["ci_high"]
    assert ("base", BIGBENCH_AVG) not in acc.index
    assert accuracy_table(cfg, _frame(rows), rule="sum").set_index(["role", "task"]).loc[("brd", "rte"), "value"] == 25


def test_paired_difference_uses_the_same_examples(cfg):
    rows = [("brd", "rte", c) for c in (True, True, False, True)] + [("base", "rte", c) for c in (True, False, False)]
    preds = _frame(rows)
    preds["example_id"] = ["0", "1", "2", "3", "0", "1", "2"]  # example 3 only scored by brd
    diff = paired_difference(cfg, preds, "brd", "base").set_index("task")
    assert diff.loc["rte", "n"] == 3
    assert diff.loc["rte", "brd"] == pytest.approx(200 / 3) and diff.loc["rte", "base"] == pytest.approx(100 / 3)
    assert diff.loc["rte", "delta"] == pytest.approx(100 / 3) and diff.loc["rte", "outcome"] == "better"
    assert diff.loc["rte", "ci_low"] <= diff.loc["rte", "delta"] <= diff.loc["rte", "ci_high"]
    with pytest.raises(EvaluateError, match="no predictions for"):
        paired_difference(cfg, preds, "brd", "teacher")


PAPER_TABLES = {  # what notebook 04 builds: table -> (where, our roles)
    "table3": ({"setting": "blind"}, ["teacher", "student_base", "further", "skd", "minillm", "brd"]),
    "table12": ({}, ["student_base", "brd", "brd_minus_sentdata"]),
    "table7": ({}, ["student_base", "brd", "brd_sentence_level"]),
    "table6": ({}, ["teacher", "second_teacher", "student_base", "brd", "brd_second_teacher"]),
    "table4": ({"block": blind.TABLE4_BLOCK}, ["skd", "skd_brd", "minillm", "minillm_brd", blind.KD_BASE_ROLE]),
}


@pytest.mark.parametrize("table", list(PAPER_TABLES))
def test_results_table_carries_the_papers_column(cfg, table):
    where, roles = PAPER_TABLES[table]
    paper = paper_rows(table, **where)
    tasks = [t for t in dict.fromkeys(paper["task"]) if t != "average"]
    rows = [(role, "bigbench:x" if task == BIGBENCH_AVG else task, c)
            for role in [*roles, "unrelated"] for task in tasks for c in (True, False, True, True)]
    acc = accuracy_table(cfg, _frame(rows))
    wide = results_table(cfg, acc, table, roles=roles, **where).set_index("role")
    assert "unrelated" not in wide.index
    assert set(paper["role"]) <= set(wide.index) and set(roles) <= set(wide.index)
    for r in paper.itertuples():  # every paper cell, as printed, Average included
        assert wide.loc[r.role, f"{r.task}: paper"] == r.value
    for role in roles:
        for task in tasks:
            assert wide.loc[role, f"{task}: ours (tiny)"] == 75.0
            assert wide.loc[role, f"{task}: n"] == 4
            assert wide.loc[role, f"{task}: 95% CI"].startswith("[")
        assert wide.loc[role, "average: ours (tiny)"] == 75.0
    with pytest.raises(EvaluateError, match="no accuracies"):
        results_table(cfg, acc, table, roles=["nobody"], **where)


# Cached re-evaluation ------------------------------------------------------------------------------------------


def test_reevaluation_scores_nothing_new(cfg, monkeypatch):
    first = evaluate_models(cfg, {"student_base": "student"}, TASKS, progress=False)
    db = cfg.data_dir / "eval" / "scores.sqlite"
    with sqlite3.connect(db) as con:
        n_rows = con.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    assert n_rows == sum(first["n_candidates"])

    def boom(*args, **kwargs):
        raise AssertionError("score_candidates called although every score is cached")

    monkeypatch.setattr(brdlib.scoring, "score_candidates", boom)
    again = evaluate_models(cfg, {"student_base": "student"}, TASKS, progress=False)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == n_rows
    pd.testing.assert_frame_equal(first, again)
    saved = load_predictions(cfg, ["student_base"])
    assert list(saved["correct_mean"]) == list(first["correct_mean"])
    with pytest.raises(EvaluateError, match="present: student_base"):
        load_predictions(cfg, ["brd"])


# brdlib.blind helpers ------------------------------------------------------------------------------------------


def test_subset_takes_whole_passages_until_enough_sentences():
    class P:
        def __init__(self, k: int) -> None:
            self.sentences = tuple("s" * (i + 1) for i in range(k))

    passages = [P(3), P(3), P(2), P(5)]
    assert blind.subset_passages(passages, 6) == passages[:2]
    assert blind.subset_passages(passages, 7) == passages[:3]
    assert blind.subset_passages(passages, 1) == passages[:1]
    assert blind.subset_passages(passages, None) == passages
    with pytest.raises(blind.BlindError, match="positive"):
        blind.subset_passages(passages, 0)


def test_sign_test_and_claims_against_the_paper():
    assert blind.sign_test(5, 0) == pytest.approx(2 / 32)
    assert blind.sign_test(3, 3) == 1.0 and math.isnan(blind.sign_test(0, 0))
    per_task = pd.DataFrame({"task": list("abcde"), "outcome": ["better", "better", "worse", "tied", "better"]})
    claims = blind.bigbench_claims(per_task).set_index("quantity")
    assert claims.loc["BIG-bench tasks compared", "ours"] == 5
    assert claims.loc["BIG-bench tasks compared", "paper (A.3, about)"] == 73
    assert claims.loc["tied tasks (same accuracy)", "ours"] == 1
    assert claims.loc["share improved, of all tasks", "ours"] == 0.6
    assert claims.loc["share improved, of non-tied tasks", "ours"] == 0.75
    assert claims.loc["share improved, of all tasks", "paper (A.3, about)"] == pytest.approx(0.667)


def test_table6_maps_subset_students_to_the_papers_roles():
    acc = pd.DataFrame({"role": ["teacher", "second_teacher", "student_base", "brd", "brd_subset_teacher",
                                 "brd_subset_second_teacher"], "task": "rte", "value": [1, 2, 3, 4, 5, 6]})
    out = blind.table6_accuracy(acc, {"teacher": "brd_subset_teacher", "second_teacher": "brd_subset_second_teacher"})
    assert dict(zip(out["role"], out["value"], strict=True)) == {
        "teacher": 1, "second_teacher": 2, "student_base": 3, "brd": 5, "brd_second_teacher": 6}  # not the main brd


def test_blind_models_and_kd_roles_are_checked(cfg, monkeypatch):
    assert blind.blind_models(cfg) == {"teacher": "teacher", "student_base": "student", "brd": "brd",
                                       "further": "further"}
    smoke = load_config("smoke")
    assert blind.blind_models(smoke)["second_teacher"] == "second_teacher"
    paper = load_config("paper")
    assert {"second_teacher", "large_baseline"} <= set(blind.blind_models(paper))
    monkeypatch.setattr("brdlib.blind.ensure_kd_students", lambda cfg_: {"skd": "a"})  # a role missing
    with pytest.raises(blind.BlindError, match="expected the roles"):
        blind.kd_students(cfg)


def test_evaluate_blind_scores_bigbench_only_for_table3_rows(cfg, monkeypatch):
    calls = []

    def fake(cfg_, models, tasks=None, split="test", **kw):
        calls.append((dict(models), tasks))
        return pd.DataFrame([{"role": r, "task": t} for r in models for t in (tasks or ["all"])])

    monkeypatch.setattr("brdlib.blind.evaluate_models", fake)
    frame = blind.evaluate_blind(cfg, {"brd": "brd", "teacher": "teacher", "second_teacher": "x",
                                       "brd_sentence_level": "brd_sentence_level"})
    main = blind.main_tasks(cfg)
    assert main == ["xnli", "rte", "cb", "pawsx", "boolq", "sst2"]
    assert calls == [({"brd": "brd", "teacher": "teacher"}, None),
                     ({"second_teacher": "x", "brd_sentence_level": "brd_sentence_level"}, main)]
    assert set(frame["role"]) == {"brd", "teacher", "second_teacher", "brd_sentence_level"}
    only_bb = load_config("tiny", ["data.tasks=[bigbench]"])
    with pytest.raises(blind.BlindError, match="second_teacher.*add some of xnli"):
        blind.evaluate_blind(only_bb, {"second_teacher": "x"})


def test_bigbench_per_task_and_figure(cfg):
    rows = [(role, f"bigbench:{t}", c) for role, t, cs in [
        ("brd", "a", (True, True)), ("student_base", "a", (False, True)),
        ("brd", "b", (True, False)), ("student_base", "b", (True, False)),
    ] for c in cs]
    per_task = blind.bigbench_per_task(cfg, _frame(rows).assign(example_id=["0", "1"] * 4))
    assert list(per_task["task"]) == ["a", "b"] and list(per_task["outcome"]) == ["better", "tied"]
    assert list(per_task["delta"]) == [50.0, 0.0]
    fig = blind.bigbench_figure(per_task)
    assert "better on 1 of 2" in fig.axes[0].get_title()


# Notebook 04 on tiny -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_04_writes_every_blind_table_on_tiny(tiny_study):
    assert "models.extra.second_teacher=tiny-random:2" in tiny_study.overrides  # exercises Table 6
    tiny_study.executed("04_blind_test")
    figures = tiny_study.figures
    for stem in ["04_table3_blind", "04_figure3_bigbench", "04_table12", "04_table7", "04_table6"]:
        for ext in ("csv", "md", "tex"):
            assert (figures / f"{stem}.{ext}").is_file(), f"{stem}.{ext}"
    for stem in ["04_table3_blind", "04_figure3_bigbench"]:
        assert (figures / f"{stem}.png").stat().st_size > 1000
    table3 = (figures / "04_table3_blind.md").read_text()
    assert "profile=tiny (tiny, numbers meaningless)" in table3 and "n per task" in table3
    table6 = pd.read_csv(figures / "04_table6.csv").set_index("role")
    assert table6.loc["brd_second_teacher", "xnli: paper"] == 32.0 and table6.loc["brd", "xnli: paper"] == 33.7
    assert not pd.isna(table6.loc["brd_second_teacher", "xnli: ours (tiny)"])
    students = tiny_study.root / "data" / "tiny" / "students"
    assert {"brd", "further", "brd_minus_sentdata", "brd_sentence_level", "brd_subset_teacher",
            "brd_subset_second_teacher"} <= {p.name for p in students.iterdir()}
    tasks_by_role = load_predictions(tiny_study.config()).groupby("role")["task"].agg(set)
    assert any(t.startswith("bigbench:") for t in tasks_by_role["brd"])  # Table 3 / Figure 3 rows: every task
    for role in ["second_teacher", "brd_sentence_level", "brd_subset_second_teacher"]:  # Tables 4, 6, 7, 12
        assert tasks_by_role[role] == set(blind.main_tasks(tiny_study.config())), role
    kd_available = (NOTEBOOK_DIR.parent / "brdlib" / "kd.py").is_file()
    assert (figures / "04_table4_kd.csv").is_file() == kd_available


def test_kd_rows_name_the_init_model_only_when_trained_here(cfg):
    refs = {"skd": "skd", "minillm": "minillm"}
    brd = {"skd_brd": "skd_brd", "minillm_brd": "minillm_brd"}
    assert blind.kd_models(cfg, refs, brd) == {**refs, **brd, blind.KD_BASE_ROLE: "student"}
    paper = load_config("paper")
    if getattr(paper.kd, "released", None):
        assert blind.KD_BASE_ROLE not in blind.kd_models(paper, refs, brd)


def test_kd_brd_training_uses_its_own_batch_and_length(cfg):
    derived = cfg.recipe("kd_brd")
    assert (derived.batch_size, derived.max_length, derived.max_steps) == (1, 32, 1)
    assert derived.learning_rate == cfg.train.learning_rate
    assert (cfg.train.batch_size, cfg.train.max_length) != (1, 32)  # the profile itself is untouched
    unset = cfg.recipes.model_copy(update={"kd_brd": cfg.recipes.kd_brd.model_copy(
        update={"batch_size": None, "max_length": None})})
    plain = cfg.model_copy(update={"recipes": unset}).recipe("kd_brd")
    assert (plain.batch_size, plain.max_length) == (cfg.train.batch_size, cfg.train.max_length)


# The readings in the predictions and the tables (issue 15): ties, truncation, start token -----------------------


def _tied_examples(n: int, k: int = 4):
    from brdlib.tasks import Example

    return [Example("rte", str(i), "Q? Answer:", tuple(f"c{j}" for j in range(k)), 0, "test", "x", "t")
            for i in range(n)]


def test_tied_scores_spread_over_the_candidates_and_are_counted(cfg):
    """Equal scores (common in bf16) went to the first candidate: a task listing the gold answer first gained."""
    from brdlib.evaluate import predictions_frame

    examples = _tied_examples(400)
    scores = [[CandidateScore(-1.0, 1)] * 4 for _ in examples]
    frame = predictions_frame("student", examples, scores)
    counts = frame["pred_mean"].value_counts()
    assert set(counts.index) == {0, 1, 2, 3} and counts.min() > 60
    assert (frame["pred_mean"] == frame["pred_sum"]).all()
    again = predictions_frame("student", examples, scores)
    assert list(again["pred_mean"]) == list(frame["pred_mean"])  # repeatable
    other = predictions_frame("student", examples, scores, seed=1)
    assert list(other["pred_mean"]) != list(frame["pred_mean"])  # seeded
    first = predictions_frame("student", examples, scores, tie_break="first")
    assert (first["pred_mean"] == 0).all()
    assert frame["tied_mean"].all() and frame["tied_sum"].all()
    acc = accuracy_table(cfg, frame).set_index("task")
    assert acc.loc["rte", "n_ties"] == 400 and acc.loc["rte", "n_truncated"] == 0


def test_truncation_and_ties_are_counted_in_the_tables_and_the_caption_names_the_readings(tmp_path):
    from brdlib.evaluate import caption

    cfg = load_config("tiny", [f"output_root={tmp_path}", "eval.bootstrap_samples=50", "eval.max_length=16"])
    preds = evaluate_model(cfg, "student", "student_base", TASKS, progress=False)
    assert preds["truncated"].any() and (preds["max_length"] == 16).all()
    acc = accuracy_table(cfg, preds).set_index("task")
    for task, frame in preds.groupby("task"):
        assert acc.loc[task, "n_truncated"] == frame["truncated"].sum() > 0
        assert acc.loc[task, "n_ties"] == frame["tied_mean"].sum()
    wide = results_table(cfg, accuracy_table(cfg, preds), "table3", setting="blind").set_index("role")
    assert wide.loc["student_base", "rte: truncated"] == acc.loc["rte", "n_truncated"]
    assert wide.loc["student_base", "rte: ties"] == acc.loc["rte", "n_ties"]
    text = caption(cfg, preds, "Table 3")
    assert "special_tokens=tokenizer" in text and "left-truncated" in text and "ties broken at random" in text
    n_trunc = int(preds["truncated"].sum())
    assert f"{n_trunc} of {len(preds)} examples truncated" in text


def test_hub_ids_resolve_as_specs_not_student_names(tmp_path):
    """The paper's released KD students are hub ids ('MiniLLM/KD-gpt2-760M'): notebook 04 resolves them as specs.
    Before the fix ``train.is_trained`` raised 'not a plain directory name' on the slash and notebook 04 crashed."""
    from brdlib.store import resolve_model

    paper = load_config("paper", [f"output_root={tmp_path}"])
    for ref in paper.kd.released.values():
        assert resolve_model(paper, ref).spec == ref
    rehearsal = load_config("rehearsal", [f"output_root={tmp_path}"])
    assert resolve_model(rehearsal, "tiny-random-gpt2:1").spec == "tiny-random-gpt2:1"
