"""brdlib.plan and `brd plan`: the work of every stage counted from a profile, hours from labelled rates."""

from __future__ import annotations

import csv
import json

import pytest

from brdlib import cli, plan
from brdlib.bigbench import REDUCED_SET, SELECTION_CSV
from brdlib.config import load_config
from brdlib.specs import classify_spec
from brdlib.tasks import TASKS


@pytest.fixture(scope="module")
def tiny():
    return load_config("tiny")


@pytest.fixture(scope="module")
def paper():
    return load_config("paper")


def _work(works, stage):
    return next(w for w in works if w.stage == stage)


def test_tiny_counts_equal_hand_computation(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(plan, "TASK_SHAPES_JSON", tmp_path / "absent.json")  # the assumed shapes (TASK_SHAPES)
    works, rates = plan.count_work(tiny)
    assert rates["task example shapes"].label == "assumed"
    # notebook 01: every sentence x every behaviour (tiny: 12 sentences, ner and qra)
    assert _work(works, "teacher on the corpus").counts["requests"] == 12 * 2
    assert _work(works, "teacher on the corpus").counts["generated_max"] == 12 * 2 * 16
    # training tokens = students x max_steps x batch_size x max_length of their recipe (tiny.yaml)
    assert _work(works, "BRD student").counts["tokens"] == 3 * 2 * 128
    assert _work(works, "FURTHER student").counts["tokens"] == 2 * 2 * 128
    assert _work(works, "ablation students (Tables 12, 7)").counts["tokens"] == 2 * 2 * 2 * 128
    assert _work(works, "KD students (SKD, MiniLLM)").counts["tokens"] == 2 * 2 * 2 * 64
    assert _work(works, "KD '+BRD' students (Table 4)").counts["tokens"] == 2 * 1 * 1 * 32
    assert _work(works, "protocol students (relaxed, supervised)").counts == {"students": 8, "tokens": 8 * 2 * 2 * 128}
    assert _work(works, "data-size students (Figure 2)").counts["tokens"] == round(3 * 0.5) * 2 * 128
    # notebook 05: 4 training inputs per protocol task (6 Table 9 tasks + A.3's 5 BIG-bench tasks), each read
    # sentence by sentence (TASK_SHAPES), x 2 behaviours; the teacher's pseudo-answers score every candidate
    table9 = ["xnli", "rte", "cb", "pawsx", "boolq", "sst2"]
    sentences = sum(4 * plan.TASK_SHAPES[t].sentences for t in table9) + 5 * 4 * plan.TASK_SHAPES["bigbench"].sentences
    assert _work(works, "teacher on the task inputs (BRD²)").counts["requests"] == 2 * sentences
    with open(SELECTION_CSV) as fh:
        rows = {r["task"]: r for r in csv.DictReader(fh)}
    bb_candidates = sum((int(rows[t]["min_candidates"]) + int(rows[t]["max_candidates"])) / 2 for t in REDUCED_SET)
    expected = 4 * sum(len(TASKS[t].candidates) for t in table9) + 4 * bb_candidates
    pseudo = _work(works, "teacher's pseudo-answers (TaskDistillation)")
    assert pseudo.counts["requests"] == pytest.approx(expected)
    # each example's prompt once, then every candidate's answer on it (brdlib.scoring)
    shapes, bb = plan.TASK_SHAPES, plan.TASK_SHAPES["bigbench"]
    tokens = sum(4 * (shapes[t].context_tokens + len(TASKS[t].candidates) * shapes[t].answer_tokens) for t in table9)
    tokens += 4 * 5 * bb.context_tokens + 4 * bb_candidates * bb.answer_tokens
    assert pseudo.counts["tokens"] == pytest.approx(tokens)
    assert pseudo.flops == pytest.approx(2 * plan.TINY_PARAMS[0] * tokens)


def test_measured_task_shapes_replace_the_assumed(tiny, monkeypatch, tmp_path):
    row = {"n": 9, "prompt_tokens": 10.0, "answer_tokens": 1.5, "candidates": 3, "sentences": 2.5}
    bb = {"n": 9, "prompt_tokens": 99.0, "answer_tokens": 5.0, "candidates": 4.5, "sentences": 3.0}
    path = tmp_path / "task_shapes.json"
    path.write_text(json.dumps({"tasks": {"xnli": row}, "bigbench_mean": bb}))
    monkeypatch.setattr(plan, "TASK_SHAPES_JSON", path)
    xnli, rte, winowhy = plan.task_counts(tiny, ["xnli", "rte", "bigbench:winowhy"])
    assert (xnli.shape.context_tokens, xnli.shape.answer_tokens, xnli.shape.sentences) == (10.0, 1.5, 2.5)
    assert rte.shape == plan.TASK_SHAPES["rte"]  # not measured: assumed
    assert (winowhy.shape.context_tokens, winowhy.candidates) == (99.0, 4.5)  # BIG-bench mean
    assert xnli.tokens(4) == 4 * (10.0 + 3 * 1.5)
    _, rates = plan.count_work(tiny)
    assert rates["task example shapes"].label == "measured"
    assert rates["task example shapes"].source == "bench/results/task_shapes.json"


def test_second_teacher_and_released_kd_students_are_counted(paper):
    works, _ = plan.count_work(paper)
    stages = [w.stage for w in works]
    assert _work(works, "second teacher on a corpus subset (Table 6)").counts["requests"] == 1_000_000 * 2
    assert "KD students (SKD, MiniLLM)" not in stages  # kd.released: Gu et al.'s GPT-2 760M students are used as is
    kd_brd = _work(works, "KD '+BRD' students (Table 4)")
    assert kd_brd.flops == pytest.approx(8 * 774e6 * 2 * 40_000 * 8 * 1024)  # gradient checkpointing: 8·N per token
    assert _work(works, "teacher on the corpus").flops == pytest.approx(
        2 * 13e9 * _work(works, "teacher on the corpus").counts["generated_tokens"])


def test_hours_scale_as_one_over_the_devices(paper):
    one, four, eight = (plan.make_plan(paper, n, "h100") for n in (1, 4, 8))
    assert one.total_hours > 0
    for a, b, c in zip(one.stages, four.stages, eight.stages, strict=True):
        assert a.work == b.work == c.work
        assert b.hours == pytest.approx(a.hours / 4) and c.hours == pytest.approx(a.hours / 8)
    assert plan.make_plan(paper, 1, "a100").total_hours > one.total_hours  # a slower GPU takes longer


def test_every_rate_is_labelled_with_a_source(paper, tiny):
    for p in (plan.make_plan(paper, 4, "a100"), plan.make_plan(tiny, 1, "cpu")):
        for rate in [s.rate for s in p.stages] + p.rates:
            assert rate.label in ("measured", "assumed") and rate.source.strip()
        table = p.table()
        assert set(table["rate label"][:-1]) <= {"measured", "assumed"}
        assert table["rate source"].str.len().min() > 0
    with pytest.raises(plan.PlanError, match="no source"):
        plan.Rate("x", 1.0, "s", "assumed", " ")
    with pytest.raises(plan.PlanError, match="'measured' or 'assumed'"):
        plan.Rate("x", 1.0, "s", "guessed", "a source")


def test_cpu_rates_are_read_from_the_committed_smoke_run(tiny, monkeypatch, tmp_path):
    rates = plan.device_rates("cpu")
    assert rates["generate"].label == rates["train"].label == "measured"
    assert "figures/smoke/01_teacher_run.csv" in rates["generate"].source
    assert rates["score"].label == "assumed"
    monkeypatch.setattr(plan, "SMOKE_FIGURES", tmp_path)
    with pytest.raises(plan.PlanError, match="01_teacher_run.csv"):
        plan.device_rates("cpu")


def test_gpu_check_output_replaces_the_assumed_training_mfu(monkeypatch, tmp_path):
    report = {"size": "gpu", "device": {"device_name": "NVIDIA A100-SXM4-80GB"}, "training": {"mfu": 0.41}}
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(report))
    monkeypatch.setattr(plan, "GPU_CHECK_JSON", path)
    a100 = plan.device_rates("a100")
    assert a100["train"].label == "measured" and a100["train"].value == pytest.approx(312e12 * 0.41)
    assert a100["generate"].label == "assumed"
    assert plan.device_rates("a10")["train"].label == "assumed"  # an A100's figure is not an A10's
    path.write_text(json.dumps({**report, "size": "cpu"}))
    assert plan.device_rates("a100")["train"].label == "assumed"  # the shrunk CPU check says nothing about a GPU


def test_unknown_kind_and_bad_gpus_are_refused(paper, capsys):
    with pytest.raises(plan.PlanError, match="unknown device kind 'v100'; accepted: a100, h100, h200, l4, a10"):
        plan.make_plan(paper, 1, "v100")
    with pytest.raises(plan.PlanError, match="positive whole number"):
        plan.make_plan(paper, 0, "a100")
    assert cli.main(["plan", "paper", "--gpu", "v100"]) == 2
    assert "accepted: a100, h100, h200, l4, a10, rtx4090, cpu" in capsys.readouterr().err
    assert cli.main(["plan", "papr"]) == 2
    assert "unknown profile 'papr'" in capsys.readouterr().err


def test_cli_plan_prints_every_stage_and_the_total(paper, capsys):
    assert cli.main(["plan", "paper", "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    works, _ = plan.count_work(paper)
    assert all(w.stage in out for w in works) and "total" in out
    assert out.startswith("brd plan paper: 4 x NVIDIA A100")
    total = plan.make_plan(paper, 4, "a100").total_hours
    assert f"total {total:,.2f} h" in out
    rows = [line for line in out.splitlines() if any(line.strip().startswith(w.stage) for w in works)]
    assert len(rows) == len(works) and all(("measured" in r) != ("assumed" in r) for r in rows)
    assert cli.plan_main(["paper", "--gpus", "8", "--gpu", "h100"]) == 0
    assert "8 x NVIDIA H100" in capsys.readouterr().out


def test_gpu1_profile_loads_and_fits_one_24gb_gpu_overnight():
    cfg = load_config("gpu1")
    assert cfg.models.student == "facebook/xglm-564M" and cfg.data.source == "hub"
    assert all(classify_spec(spec).kind == "hub" for spec in cfg.models.roles().values())
    assert {r: cfg.recipe(r).max_steps for r in ("brd", "further", "ablation", "task", "kd", "kd_brd")}
    teacher_params, _ = plan.model_params(cfg.models.teacher)
    assert teacher_params * 2 / 2**30 < 0.85 * 24  # bf16 weights inside vLLM's share of a 24 GB GPU
    hours = {kind: plan.make_plan(cfg, 1, kind).total_hours for kind in ("l4", "a10", "rtx4090")}
    assert 8 <= hours["l4"] <= 12 and 8 <= hours["a10"] <= 12 and hours["rtx4090"] < hours["a10"]


def test_plan_table_of_several_device_counts(paper):
    table = plan.plan_table(paper, (1, 4, 8), "a100")
    assert list(table.columns[-3:]) == ["hours on 1 x a100", "hours on 4 x a100", "hours on 8 x a100"]
    assert table.iloc[-1]["stage"] == "total"
    assert table.iloc[-1]["hours on 1 x a100"] == pytest.approx(4 * table.iloc[-1]["hours on 4 x a100"], rel=0.01)


def test_model_sizes_known_parsed_or_refused():
    assert plan.model_params("facebook/xglm-564M")[0] == 564e6
    assert plan.model_params("EleutherAI/pythia-1.4b")[0] == pytest.approx(1.4e9)
    assert plan.model_params("smollm2-135m-instruct")[1].startswith("measured")
    with pytest.raises(plan.PlanError, match="size of model 'someone/model' is unknown"):
        plan.model_params("someone/model")
