"""brdlib.protocols on the tiny profile: pseudo-labels are the teacher's choice under the scoring rule, BRD² passages
put each task-input sentence before its annotation, -NER/-QRA drop their passages, SFT texts end with the gold
answer, checkpoint selection keeps the best tune-split checkpoint, and notebooks 05 and 06 run on tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brdlib import protocols as P
from brdlib.assemble import load_variant
from brdlib.config import load_config
from brdlib.records import BehaviourRecord
from brdlib.store import load_card
from brdlib.tasks import Example


def tiny_cfg(root: Path, *overrides: str):
    return load_config("tiny", [f"output_root={root}", *overrides])


def toy_example(text: str, example_id: str = "rte-train-1") -> Example:
    return Example(task="rte", example_id=example_id, prompt=f"Question: {text} Answer:", candidates=("Yes", "No"),
                   gold=1, split="train", source="toy", text=text)


# Tasks and inputs -------------------------------------------------------------------------------------------------


def test_protocol_tasks_default_and_override(tmp_path):
    cfg = tiny_cfg(tmp_path)
    tasks = P.protocol_tasks(cfg)
    # Table 9 tasks of the profile, then the reduced BIG-bench tasks the fixture has (two of A.3's five)
    assert tasks == ["xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench:movie_dialog_same_or_different",
                     "bigbench:winowhy"]
    assert P.protocol_tasks(tiny_cfg(tmp_path, "protocols.relaxed_tasks=[rte, bigbench]")) == [
        "rte", "bigbench:movie_dialog_same_or_different", "bigbench:winowhy"]
    with pytest.raises(P.ProtocolError, match="relaxed_tasks.*unknown task 'mnli'"):
        P.protocol_tasks(tiny_cfg(tmp_path, "protocols.relaxed_tasks=[mnli]"))


def test_train_inputs_are_cut_stratified_and_from_train(tmp_path):
    cfg = tiny_cfg(tmp_path, "protocols.task_train_examples=3")
    inputs = P.train_inputs(cfg, ["rte", "sst2"])
    assert {t: len(v) for t, v in inputs.items()} == {"rte": 3, "sst2": 3}
    assert all(e.split == "train" for v in inputs.values() for e in v)
    assert inputs == P.train_inputs(cfg, ["rte", "sst2"])  # seeded: the same inputs every time


# TaskDistillation ---------------------------------------------------------------------------------------------------


def test_pseudo_labels_are_the_teachers_argmax_under_the_rule(tmp_path):
    import torch

    from brdlib.models import load_ref
    from brdlib.scoring import predict, score_examples

    cfg = tiny_cfg(tmp_path, "protocols.task_train_examples=3")
    inputs = P.train_inputs(cfg, ["rte", "cb", "bigbench:winowhy"])
    pseudo = P.pseudo_labels(cfg, inputs, progress=False)
    teacher = load_ref(cfg, "teacher")
    with torch.inference_mode():
        for task, examples in inputs.items():
            scores = score_examples(teacher.model, teacher.tokenizer, examples, cache=None, progress=False)
            for ex, cand in zip(examples, scores, strict=True):
                row = pseudo[(pseudo["task"] == task) & (pseudo["example_id"] == ex.example_id)]
                assert row["pseudo"].item() == predict(cand, cfg.eval.rule)
                assert row["pseudo_answer"].item() == ex.candidates[predict(cand, cfg.eval.rule)]
    # the TaskDistillation text is the prompt followed by the pseudo-answer, as the scorer reads it
    rows = P.task_distillation_rows(inputs, pseudo)
    by_id = {(e.task, e.example_id): e for v in inputs.values() for e in v}
    for r in rows:
        ex = by_id[(r["doc_id"], r["passage_id"])]
        answer = pseudo[(pseudo["example_id"] == ex.example_id)]["pseudo_answer"].item()
        assert r["text"] == ex.prompt + ex.target_delimiter + answer
    table = P.pseudo_label_table(cfg, pseudo)
    gold_agree = (pseudo["pseudo"] == pseudo["gold"]).groupby(pseudo["task"]).mean() * 100
    for task, value in gold_agree.items():
        assert table.set_index("task").loc[task, "pseudo-label accuracy (%)"] == pytest.approx(value, abs=0.05)


def test_sft_texts_end_with_the_gold_answer(tmp_path):
    cfg = tiny_cfg(tmp_path)
    inputs = P.train_inputs(cfg, ["xnli", "sst2", "bigbench:movie_dialog_same_or_different"])
    rows = P.sft_rows(inputs)
    examples = [e for v in inputs.values() for e in v]
    assert len(rows) == len(examples)
    for r, ex in zip(rows, examples, strict=True):
        assert r["text"].startswith(ex.prompt)
        assert r["text"].endswith(ex.target_delimiter + ex.candidates[ex.gold])
        assert r["text"] == ex.prompt + ex.target_delimiter + ex.candidates[ex.gold]
    with pytest.raises(P.ProtocolError, match="answer index 5"):
        P.answer_text(examples[0], 5)


def test_saved_rows_load_as_a_variant_and_are_reused(tmp_path):
    cfg = tiny_cfg(tmp_path)
    rows = P.sft_rows(P.train_inputs(cfg, ["rte"]))
    path = P.save_rows(cfg, "toy_sft", rows, "toy")
    card = load_card(cfg, "toy_sft")
    assert card["rows"] == len(rows) and card["rows_by_kind"] == {"sft": len(rows)}
    assert sorted(load_variant(cfg, "toy_sft")["text"]) == sorted(r["text"] for r in rows)
    stamp = (path / "card.json").stat().st_mtime_ns
    P.save_rows(cfg, "toy_sft", rows, "toy")
    assert (path / "card.json").stat().st_mtime_ns == stamp  # unchanged inputs: not rewritten
    with pytest.raises(P.ProtocolError, match="no rows"):
        P.save_rows(cfg, "empty", [], "nothing")


# BRD² on task inputs ------------------------------------------------------------------------------------------------


def test_input_passage_splits_fields_into_sentences():
    p = P.input_passage(toy_example("The cat sat. It was happy.\nA cat sat."))
    assert p.sentences == ("The cat sat.", "It was happy.", "A cat sat.")
    assert p.fields == (0, 0, 1)
    assert P.annotated_indices(p.fields, 2) == [0, 2]  # each field's first sentence first
    assert P.annotated_indices(p.fields, 1) == [0]
    assert P.annotated_indices(p.fields, None) == [0, 1, 2]
    assert P.annotated_indices([0, 0, 1, 1, 2], 4) == [0, 1, 2, 4]
    items = P.teacher_items([p], 2)
    assert [(i.passage_id, i.sentence_index, i.sentence) for i in items] == [
        ("rte-train-1", 0, "The cat sat."), ("rte-train-1", 2, "A cat sat.")]


def _record(behaviour: str, passage: P.InputPassage, i: int, response: str) -> BehaviourRecord:
    return BehaviourRecord(key=f"{behaviour}-{i}", behaviour=behaviour, passage_id=passage.passage_id,
                           sentence_index=i, sentence=passage.sentences[i], response=response, drop_reason=None)


def test_brd2_passages_put_each_sentence_before_its_annotation(tmp_path):
    cfg = tiny_cfg(tmp_path)
    p = P.input_passage(toy_example("The cat sat. It was happy.\nA cat sat."))
    records = [
        _record("ner", p, 0, 'In this sentence, "cat" is an animal entity.'),
        _record("ner", p, 2, 'In this sentence, "cat" is an animal entity again.'),
        _record("qra", p, 0, "Question: Who sat? Answer: The cat."),
    ]
    cards = P.assemble_brd2(cfg, [p], records)
    assert set(cards) == set(P.BRD2_VARIANTS)
    texts = {name: {r["kind"]: r["text"] for r in load_variant(cfg, name)} for name in P.BRD2_VARIANTS}
    assert texts[P.BRD2_DATA] == {
        "ori": "The cat sat. <sep> It was happy. <sep> A cat sat.",
        "ner": 'The cat sat. <sep> In this sentence, "cat" is an animal entity. <sep> It was happy. <sep> '
               'A cat sat. <sep> In this sentence, "cat" is an animal entity again.',
        "qra": "The cat sat. <sep> Question: Who sat? Answer: The cat. <sep> It was happy. <sep> A cat sat.",
    }
    assert texts[P.BRD2_NO_NER_DATA] == {k: v for k, v in texts[P.BRD2_DATA].items() if k != "ner"}
    assert texts[P.BRD2_NO_QRA_DATA] == {k: v for k, v in texts[P.BRD2_DATA].items() if k != "qra"}
    assert cards[P.BRD2_DATA]["annotations_used"] == {"ner": 2, "qra": 1}


def test_brd2_data_from_the_teacher_keeps_corpus_records_apart(tmp_path):
    from brdlib.teacher import teacher_output_dir

    cfg = tiny_cfg(tmp_path, "protocols.task_train_examples=2", "protocols.teacher_sentences_per_input=1",
                   "teacher.behaviours=[ner]")
    inputs = P.train_inputs(cfg, ["rte", "boolq"])
    cards = P.build_brd2_data(cfg, inputs, progress=False)
    out = P.task_teacher_dir(cfg)
    assert out.is_dir() and not teacher_output_dir(cfg).exists()  # the corpus records' folder is untouched
    assert cards[P.BRD2_DATA]["source_passages"] == 4
    records = P.input_records(cfg, P.teacher_items(P.input_passages(inputs), 1))
    assert len(records) == 4 and {r.sentence_index for r in records} == {0}  # one sentence per input, ner only
    again = P.build_brd2_data(cfg, inputs, progress=False)  # reused: nothing regenerated
    assert again[P.BRD2_DATA]["fingerprint"] == cards[P.BRD2_DATA]["fingerprint"]


# Checkpoint selection ---------------------------------------------------------------------------------------------


def test_select_checkpoint_picks_the_best_tune_score():
    assert P.select_checkpoint({2: 50.0, 4: 62.5, 6: 60.0}) == 4
    assert P.select_checkpoint({2: 70.0, 4: 70.0}) == 4  # ties: the later step
    assert P.select_checkpoint({4: 10.0}) == 4
    with pytest.raises(P.ProtocolError, match="no checkpoint"):
        P.select_checkpoint({})
    with pytest.raises(P.ProtocolError, match="NaN"):
        P.select_checkpoint({1: float("nan"), 2: 3.0})


def test_training_recipe_saves_evenly_spaced_checkpoints(tmp_path):
    cfg = tiny_cfg(tmp_path, "recipes.task.max_steps=6", "protocols.checkpoint_candidates=3",
                   "recipes.task.batch_size=4", "recipes.task.max_length=32")
    t = P.training_recipe(cfg)
    assert (t.save_steps, t.keep_checkpoints, t.save_total_limit, t.batch_size, t.max_length) == (2, True, None, 4, 32)
    assert t.recipe == "task" and t.max_steps == 6
    assert cfg.train.save_steps == 2 and cfg.train.batch_size == 2  # the profile itself is unchanged


def test_train_selected_keeps_the_best_tune_checkpoint(tmp_path, monkeypatch):
    from brdlib.store import checkpoints_dir, is_trained, load_summary

    cfg = tiny_cfg(tmp_path, "recipes.task.max_steps=2", "protocols.checkpoint_candidates=2")
    rows = P.sft_rows(P.train_inputs(cfg, ["rte", "sst2"]))
    P.save_rows(cfg, "toy_sft", rows, "toy")
    made_up = {"toy.step1": 80.0, "toy": 55.0}  # hand-made tune scores: the intermediate checkpoint wins
    calls = []

    def fake_tune_score(cfg, model, role, tasks, progress=True):
        calls.append(model)
        return made_up[model]

    monkeypatch.setattr(P, "tune_score", fake_tune_score)
    plan = P.StudentPlan("toy_sft", None, "toy")
    sel = P.train_selected(cfg, "toy", plan, ["rte"], progress=False)
    assert sorted(calls) == ["toy", "toy.step1"]
    assert (sel.chosen_step, sel.chosen) == (1, "toy.step1")
    assert [(c["step"], c["tune_score"], c["chosen"]) for c in sel.candidates] == [(1, 80.0, True), (2, 55.0, False)]
    assert is_trained(cfg, "toy.step1") and load_summary(cfg, "toy.step1")["steps"] == 1
    assert not checkpoints_dir(cfg, "toy").exists()  # optimizer states removed once selected
    saved = json.loads(P.selection_path(cfg, "toy").read_text())
    assert saved["chosen"] == "toy.step1"
    # a re-run reuses the student and the selection: nothing is trained or scored again
    monkeypatch.setattr(P, "tune_score", lambda *a, **k: pytest.fail("rescored a finished selection"))
    assert P.train_selected(cfg, "toy", plan, ["rte"], progress=False) == sel
    assert P.chosen_models({"sft": sel}) == {"sft": "toy.step1"}
    # other tune settings: the kept candidates are scored again
    calls.clear()
    monkeypatch.setattr(P, "tune_score", fake_tune_score)
    other = tiny_cfg(tmp_path, "recipes.task.max_steps=2", "protocols.tune_max_examples=1")
    assert P.train_selected(other, "toy", plan, ["rte"], progress=False).chosen == "toy.step1"
    assert sorted(calls) == ["toy", "toy.step1"]
    table = P.selection_table({"sft": sel})
    assert table["chosen"].tolist() == [True, False]

    # the other way round: the final model wins, and the intermediate checkpoint is not kept
    made_up.update({"toy2.step1": 40.0, "toy2": 41.0})
    monkeypatch.setattr(P, "tune_score", fake_tune_score)
    sel2 = P.train_selected(cfg, "toy2", plan, ["rte"], progress=False)
    assert (sel2.chosen_step, sel2.chosen) == (2, "toy2") and not is_trained(cfg, "toy2.step1")


# Table 4: TaskDistillation +BRD (§5.1) -------------------------------------------------------------------------------

CORE = ["xnli", "rte", "cb", "pawsx", "boolq", "sst2"]


def _accuracy(values: dict[str, float]):
    import pandas as pd

    return pd.DataFrame([{"role": r, "task": t, "value": v, "n": 10, "n_tasks": 1, "ci_low": v - 5, "ci_high": v + 5}
                         for r, v in values.items() for t in CORE])


def test_table4_plus_brd_is_the_task_distillation_student_trained_further_on_brd2_data(tmp_path):
    # §5.1: "+BRD" = the TaskDistillation student further trained on the BRD data of the task inputs; not brd2
    plan = P.RELAXED_STUDENTS["task_distillation_brd"]
    assert (plan.data, plan.init) == (P.BRD2_DATA, "task_distillation") == (P.RELAXED_STUDENTS["brd2"].data,
                                                                             "task_distillation")
    assert list(P.RELAXED_STUDENTS).index("task_distillation") < list(P.RELAXED_STUDENTS).index(
        "task_distillation_brd")
    assert P.TABLE4_ROLES == ("task_distillation", "task_distillation_brd")
    cfg = tiny_cfg(tmp_path)
    acc = _accuracy({"task_distillation": 50.0, "task_distillation_brd": 70.0, "brd2": 90.0})
    sels = {r: P.Selection(r, "data", "student", 2, "fp", 2, r) for r in ("task_distillation", "task_distillation_brd")}
    table = P.table4_block(cfg, acc, sels).set_index("role")
    assert list(table.index) == ["task_distillation", "task_distillation_brd"]
    assert table.loc["task_distillation_brd", "model (paper)"] == "+BRD"
    assert table.loc["task_distillation_brd", "rte: ours (tiny)"] == 70.0  # the new student's, not brd2's 90
    assert table.loc["task_distillation_brd", "rte: paper"] == 61.0
    assert "Table 11 FBRD row cell for cell" in P.TABLE4_NOTE
    with pytest.raises(P.ProtocolError, match="task_distillation_brd"):
        P.table4_block(cfg, _accuracy({"task_distillation": 50.0, "brd2": 90.0}), sels)


def test_a_plan_starts_from_the_chosen_checkpoint_of_an_earlier_plan(tmp_path, monkeypatch):
    from brdlib.store import load_summary, student_dir

    cfg = tiny_cfg(tmp_path, "recipes.task.max_steps=2", "protocols.checkpoint_candidates=2")
    P.save_rows(cfg, "toy_sft", P.sft_rows(P.train_inputs(cfg, ["rte"])), "toy")
    P.save_rows(cfg, "toy_sft2", P.sft_rows(P.train_inputs(cfg, ["sst2"])), "toy")
    scores = {"td.step1": 80.0, "td": 55.0, "td_brd.step1": 10.0, "td_brd": 20.0}
    monkeypatch.setattr(P, "tune_score", lambda cfg, model, *a, **k: scores[model])
    plans = {"td": P.StudentPlan("toy_sft", None, "first"), "td_brd": P.StudentPlan("toy_sft2", "td", "then")}
    sels = P.train_students(cfg, plans, ["rte"], progress=False)
    assert sels["td"].chosen == "td.step1"
    assert (sels["td_brd"].init, sels["td_brd"].data) == ("td.step1", "toy_sft2")  # the tune-selected checkpoint
    assert load_summary(cfg, "td_brd")["init"] == str(student_dir(cfg, "td.step1"))
    with pytest.raises(P.ProtocolError, match="'td_brd' starts from protocol student 'td'.*trained before it"):
        P.resolved_plan("td_brd", plans["td_brd"], {"td_brd": plans["td_brd"], "td": plans["td"]}, {})
    kept = P.resolved_plan("brd2", P.RELAXED_STUDENTS["brd2"], P.RELAXED_STUDENTS, {})
    assert kept == P.RELAXED_STUDENTS["brd2"]  # 'brd' is notebook 03's student, not a protocol plan


# Notebooks ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("stem, outputs", [
    ("05_relaxed_test", ["05_table3_relaxed", "05_table8", "05_table10", "05_table11", "05_table4_taskdistillation",
                         "05_pseudo_labels", "05_checkpoints"]),
    ("06_supervised", ["06_table3_supervised", "06_table10", "06_checkpoints"]),
])
def test_notebook_writes_its_tables_on_tiny(stem, outputs, tiny_study):
    tiny_study.executed(stem)
    root, figures = tiny_study.root, tiny_study.figures
    for name in outputs:
        md = (figures / f"{name}.md").read_text()
        assert "profile=tiny (tiny, numbers meaningless)" in md, name
    png = figures / ("05_relaxed.png" if stem.startswith("05") else "06_supervised.png")
    assert png.stat().st_size > 1000
    assert (root / "data" / "tiny" / "eval" / "predictions" / P.EVAL_SPLIT).is_dir()


@pytest.mark.slow
def test_notebook05_table4_plus_brd_row_is_the_task_distillation_student_trained_further(tiny_study):
    import pandas as pd

    tiny_study.executed("05_relaxed_test")
    cfg, figures = tiny_study.config(), tiny_study.figures
    td, td_brd = P.load_selection(cfg, "task_distillation"), P.load_selection(cfg, "task_distillation_brd")
    assert (td_brd.data, td_brd.init) == (P.BRD2_DATA, td.chosen)
    table = pd.read_csv(figures / "05_table4_taskdistillation.csv").set_index("role")
    acc = pd.read_csv(figures / "05_accuracy.csv")
    for task in CORE:
        ours = acc[(acc["role"] == "task_distillation_brd") & (acc["task"] == task)]["value"].item()
        assert table.loc["task_distillation_brd", f"{task}: ours (tiny)"] == pytest.approx(ours, abs=0.05)
    assert "Table 11 FBRD row cell for cell" in (figures / "05_table4_taskdistillation.md").read_text()
