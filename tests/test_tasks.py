"""brdlib.tasks and brdlib.bigbench: Table 9 prompts verbatim, candidate order, gold index, splits, bad data.

Fixture rows live in tests/fixtures/mirror/ in each source's own format (the tiny profile reads them); rows in
the hub datasets' schema are written inline.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from brdlib import bigbench, tasks
from brdlib.config import ConfigError, load_config
from brdlib.tasks import (
    EVAL_COUNTS,
    TaskDataError,
    examples_from_hub_rows,
    load_examples,
    split_info,
    stratified_partition,
    stratified_sample,
    task_data,
    task_names,
)

FIXTURE = Path(__file__).parent / "fixtures" / "mirror"
WINOWHY = "bigbench_mc/tasks/winowhy/task.json"
REAL = load_config("smoke").data.resolved_mirror_dir()
needs_mirror = pytest.mark.skipif(
    REAL is None or not (REAL / "xnli_en").is_dir(),
    reason="offline data mirror not found (set BRD_DATA_DIR or place it at ../shared/data)",
)


def tiny(*overrides: str):
    return load_config("tiny", ["data.max_examples_per_task=null", *overrides])


def by_id(task: str, split: str = "test", cfg=None) -> dict:
    return {e.example_id: e for e in task_data(cfg or tiny(), task).splits[split]}


# Table 9, verbatim, on fixture rows in the mirror's formats -------------------------------------------------------


def test_xnli_prompt_candidates_and_gold():
    ex = by_id("xnli")
    e = ex["xnli-test-1"]
    assert e.prompt == (
        "Anna walked to the harbour on Monday morning and stayed there until noon. Question: Does this imply that "
        '"Anna was at the harbour on Monday."? Yes, no or maybe? Answer:'
    )
    assert e.candidates == ("Yes", "No", "Maybe") and e.continuations == (" Yes", " No", " Maybe")
    assert [ex[f"xnli-test-{i}"].gold for i in (1, 2, 3)] == [0, 2, 1]  # entailment, neutral, contradiction
    assert [ex[f"xnli-test-{i}"].label for i in (1, 2, 3)] == ["entailment", "neutral", "contradiction"]
    assert e.text == (
        "Anna walked to the harbour on Monday morning and stayed there until noon.\nAnna was at the harbour on Monday."
    )
    tune = by_id("xnli", "tune")["xnli-dev-1"]  # the XTREME dev file: label words, no header
    assert tune.gold == 0 and tune.split == "tune" and tune.source == "mirror:xnli_en/dev-en.xtreme.tsv"


def test_rte_prompt_candidates_and_gold():
    ex = by_id("rte")
    assert ex["rte-val-0"].prompt == (
        'Question: Can we infer that "Elif visited the museum." ? Yesterday Elif visited the museum with two '
        "colleagues. Answer:"
    )
    assert ex["rte-val-0"].candidates == ("Yes", "No")
    assert (ex["rte-val-0"].gold, ex["rte-val-1"].gold) == (0, 1)  # entailment, not_entailment


def test_cb_prompt_candidates_and_gold():
    ex = by_id("cb")
    assert ex["cb-val-1"].prompt == (
        'Question: Can we infer that "Dev did not visit the station." ? Yesterday Dev visited the station with two '
        "colleagues. Answer:"
    )
    assert ex["cb-val-1"].candidates == ("Yes", "No", "Maybe")
    assert [ex[f"cb-val-{i}"].gold for i in (0, 1, 2)] == [0, 1, 2]  # entailment, contradiction, neutral


def test_pawsx_prompt_candidates_and_gold():
    ex = by_id("pawsx")
    assert ex["pawsx-test-1"].prompt == (
        "Sentence 1: Ben moved from the library to the city with Grace in 1990 . Sentence 2: Grace moved from the "
        "library to the city with Ben in 1990 . Question: Do Sentence 1 and Sentence 2 express the same meaning? "
        "Answer:"
    )
    assert ex["pawsx-test-1"].candidates == ("Yes", "No")
    assert (ex["pawsx-test-1"].gold, ex["pawsx-test-2"].gold) == (1, 0)  # label 0, label 1
    assert ex["pawsx-test-1"].source == "mirror:pawsx_en/test-en.derived_labels.tsv"
    assert "derived" in split_info(tiny(), "pawsx").note


def test_boolq_prompt_candidates_and_gold():
    ex = by_id("boolq")
    assert ex["boolq-val-0"].prompt == (
        "Harbour -- The harbour is open every day of the week, including Sundays, from nine to five. Question: is "
        "the harbour open on sundays Answer:"
    )
    assert ex["boolq-val-0"].candidates == ("Yes", "No")
    assert (ex["boolq-val-0"].gold, ex["boolq-val-1"].gold) == (0, 1)  # "true", "false"


def test_sst2_prompt_candidates_and_gold():
    ex = by_id("sst2")
    assert ex["sst2-test-2"].prompt == (
        "Question: Does the following sentence have a positive or negative sentiment? Sentence: a warm , funny "
        "film . Answer:"
    )
    assert ex["sst2-test-2"].candidates == ("positive", "negative")
    assert (ex["sst2-test-2"].gold, ex["sst2-test-3"].gold) == (0, 1)  # label 1, label 0


# The hub's schemas (paper profile): row mapping on fixture rows -------------------------------------------------


def test_hub_rows_map_to_the_same_prompts_and_golds():
    rows = [{"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": 2}]
    (x,), _ = examples_from_hub_rows("xnli", rows)
    assert x.prompt == 'A man sleeps. Question: Does this imply that "A man is awake."? Yes, no or maybe? Answer:'
    assert x.gold == 1 and x.label == "contradiction"
    rows = [{"premise": "P.", "hypothesis": "H.", "idx": 7, "label": 1}]
    (r,), _ = examples_from_hub_rows("rte", rows)
    assert (r.gold, r.label, r.example_id) == (1, "not_entailment", "rte-test-7")
    (c,), _ = examples_from_hub_rows("cb", [{"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 2}])
    assert (c.gold, c.label) == (2, "neutral")
    (b,), _ = examples_from_hub_rows("boolq", [{"question": "is it", "passage": "It is.", "idx": 0, "label": 1}])
    assert (b.prompt, b.gold) == ("It is. Question: is it Answer:", 0)
    rows = [{"id": 1, "sentence1": "A b .", "sentence2": "B a .", "label": 1},
            {"id": 2, "sentence1": "C d .", "sentence2": "D c .", "label": -1}]
    paws, skipped = examples_from_hub_rows("pawsx", rows)
    assert [(p.example_id, p.gold) for p in paws] == [("pawsx-test-1", 0)]
    assert skipped == {"label -1 (no label)": 1}
    (s,), _ = examples_from_hub_rows("sst2", [{"sentence": "dull . ", "label": 0, "idx": 3}])
    assert s.prompt.endswith("Sentence: dull . Answer:") and s.gold == 1


def test_hub_ids_are_the_documented_datasets():
    assert {t: (h.path, h.config) for t, h in tasks.HUB.items()} == {
        "xnli": ("facebook/xnli", "en"),
        "rte": ("aps/super_glue", "rte"),
        "cb": ("aps/super_glue", "cb"),
        "boolq": ("aps/super_glue", "boolq"),
        "pawsx": ("google-research-datasets/paws-x", "en"),
        "sst2": ("nyu-mll/glue", "sst2"),
    }
    cfg = load_config("paper")
    assert tasks.split_plan(cfg, "boolq") == tasks.SplitPlan("validation", "train", carve="train")
    assert tasks.split_plan(cfg, "pawsx") == tasks.SplitPlan("test", "train", "validation")


def test_hub_fixture_dir_feeds_the_hub_loader_and_names_what_is_missing(tmp_path):
    cfg = load_config("paper", ["data.hub_fixture_dir=tests/fixtures/hub", "data.max_examples_per_task=3"])
    info = split_info(cfg, "sst2")
    hub = "hub-fixture:nyu-mll/glue/sst2"
    assert info.sources == {"test": f"{hub}:validation", "train": f"{hub}:train", "tune": f"{hub}:train",
                            "heldout": f"{hub}:validation"}
    assert [e.task for e in load_examples(cfg, "sst2")] == ["sst2"] * 3
    empty = load_config("paper", [f"data.hub_fixture_dir={tmp_path}"])
    with pytest.raises(TaskDataError, match=rf"task rte: could not load hub-fixture:aps/super_glue/rte:\w+ from "
                                            rf"{tmp_path}/aps/super_glue \("):
        load_examples(empty, "rte")


# Bad data ------------------------------------------------------------------------------------------------------


def _copy_fixture(tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror"
    shutil.copytree(FIXTURE, mirror)
    return mirror


def test_malformed_rows_name_the_task_file_and_row(tmp_path):
    mirror = _copy_fixture(tmp_path)
    cfg = tiny("data.source=mirror", f"data.mirror_dir={mirror}")
    with (mirror / "rte/val.jsonl").open("a") as fh:
        fh.write('{"premise": "P.", "hypothesis": "H.", "label": "maybe", "idx": 99}\n')
    with pytest.raises(TaskDataError, match=r"task rte: .*rte/val\.jsonl, row 9: label 'maybe' is not one of"):
        load_examples(cfg, "rte")
    with (mirror / "cb/val.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(TaskDataError, match=r"task cb: .*cb/val\.jsonl, row 10: not valid JSON"):
        load_examples(cfg, "cb")
    with (mirror / "sst2/glue_sst2_resplit/test.tsv").open("a") as fh:
        fh.write("only one column\n")
    with pytest.raises(TaskDataError, match=r"task sst2: .*test\.tsv, row 10: 1 tab-separated columns, expected 2"):
        load_examples(cfg, "sst2")
    (mirror / "boolq/val.jsonl").unlink()
    with pytest.raises(TaskDataError, match=r"task boolq: file .*boolq/val\.jsonl is missing"):
        load_examples(cfg, "boolq")
    with (mirror / "xnli_en/test.jsonl").open("a") as fh:
        fh.write('{"premise": "P.", "hypothesis": "H.", "label": 5}\n')
    with pytest.raises(TaskDataError, match=r"row 13: label 5 out of range; accepted: 0, 1, 2"):
        load_examples(cfg, "xnli")


def test_unknown_task_split_and_bigbench_task_fail_clearly(monkeypatch):
    with pytest.raises(TaskDataError, match="unknown task 'mnli'; accepted: xnli, rte"):
        load_examples(tiny(), "mnli")
    with pytest.raises(TaskDataError, match="unknown split 'dev' for task rte; accepted: train, tune, test, heldout"):
        load_examples(tiny(), "rte", "dev")
    with pytest.raises(bigbench.BigBenchError, match="unknown BIG-bench task 'nonexistent'"):
        load_examples(tiny(), "bigbench:nonexistent")
    with pytest.raises(bigbench.BigBenchError, match="has no subtask 'two'; subtasks: five_objects, three_objects"):
        load_examples(tiny(), "bigbench:logical_deduction:two")
    with pytest.raises(ConfigError, match="unknown task 'mnli'"):
        load_config("tiny", ["data.tasks=[xnli, mnli]"])
    monkeypatch.setattr(type(tiny().data), "resolved_data_dir", lambda self: None)
    with pytest.raises(TaskDataError, match="task rte: no offline mirror found"):
        load_examples(tiny("data.split_seed=11"), "rte")  # a new cache key: nothing cached


# Splits ---------------------------------------------------------------------------------------------------------


def _ids(examples):
    return {e.example_id for e in examples}


def test_splits_are_disjoint_and_carving_is_recorded():
    cfg = tiny()
    for task in ("xnli", "rte", "cb", "pawsx", "sst2"):
        d = task_data(cfg, task)
        assert not _ids(d.splits["train"]) & _ids(d.splits["tune"])
        assert not (_ids(d.splits["train"]) | _ids(d.splits["tune"])) & _ids(d.splits["test"])
        assert d.splits["heldout"] == d.splits["test"]
        assert {e.split for e in d.splits["train"]} == {"train"} and {e.split for e in d.splits["test"]} == {"test"}
    assert split_info(cfg, "xnli").carved == ""
    assert split_info(cfg, "rte").carved.startswith("tune = 10% of train")
    assert "no training split" in split_info(cfg, "pawsx").carved
    assert split_info(cfg, "pawsx").sources["train"] == "mirror:pawsx_en/dev-en.xtreme.tsv"


def test_boolq_without_train_carves_80_10_10_from_the_evaluation_split():
    d = task_data(tiny(), "boolq")
    train, tune, heldout, test = (_ids(d.splits[s]) for s in ("train", "tune", "heldout", "test"))
    assert len(test) == 20 and (len(train), len(tune), len(heldout)) == (16, 2, 2)
    assert train | tune | heldout == test and not (train & tune or train & heldout or tune & heldout)
    assert "80%/10%/10% of the evaluation split" in d.info.carved


def test_pawsx_dev_flag_evaluates_on_exact_labels_and_trains_on_the_other_split():
    d = task_data(tiny("data.pawsx_eval_split=dev"), "pawsx")
    assert d.info.sources["test"] == "mirror:pawsx_en/dev-en.xtreme.tsv"
    assert d.info.sources["train"] == "mirror:pawsx_en/test-en.derived_labels.tsv" and d.info.note == ""


def test_carving_is_fixed_by_split_seed():
    a = task_data(tiny(), "boolq").splits["heldout"]
    assert _ids(a) == _ids(task_data(tiny("seed=5"), "boolq").splits["heldout"])
    assert _ids(a) != _ids(task_data(tiny("data.split_seed=3"), "boolq").splits["heldout"])


def test_max_examples_is_a_stratified_seeded_subsample():
    cfg = load_config("tiny")  # max_examples_per_task: 4
    xs = load_examples(cfg, "xnli")
    assert len(xs) == 4 and xs == load_examples(cfg, "xnli")
    assert sorted(e.gold for e in xs).count(0) == 2  # 4 of 12 balanced rows: 2/1/1 by largest remainder


def test_stratified_sample_keeps_shares_and_handles_singletons():
    items = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    got = stratified_sample(items, 10, 0, str)
    assert (got.count("a"), got.count("b"), got.count("c")) == (6, 3, 1)
    assert stratified_sample(items, 200, 0, str) == items
    unique = [f"x{i}" for i in range(50)]
    picks = [stratified_sample(unique, 5, s, str) for s in (0, 1)]
    assert all(len(p) == 5 for p in picks) and picks[0] != picks[1]
    rest, part = stratified_partition(unique, [0.1], 0, str)
    assert (len(rest), len(part)) == (45, 5) and sorted(rest + part) == sorted(unique)


# BIG-bench -------------------------------------------------------------------------------------------------------


def test_bigbench_prompt_is_task_prefix_plus_input_in_bigbench_format():
    ex = by_id("bigbench:winowhy")
    e = ex["bigbench:winowhy-winowhy-1"]
    raw = json.loads((FIXTURE / "bigbench_mc/tasks/winowhy/task.json").read_text())
    assert e.prompt == raw["task_prefix"] + "\n" + raw["examples"][0]["input"] + "\nThe above reasoning is "
    assert e.candidates == ("correct", "incorrect") and e.gold == 1 and e.target_delimiter == ""
    assert e.continuations == ("correct", "incorrect") and e.scores == (0.0, 1.0)
    assert e.text == raw["examples"][0]["input"]


def test_bigbench_default_prefixes_append_the_choices_and_subtasks_merge():
    ex = task_data(tiny(), "bigbench:logical_deduction").splits["test"]
    assert len(ex) == 8 and {e.example_id.split("-")[1] for e in ex} == {"three_objects", "five_objects"}
    e = next(e for e in ex if e.example_id == "bigbench:logical_deduction-three_objects-1")
    raw = json.loads((FIXTURE / "bigbench_mc/tasks/logical_deduction/three_objects/task.json").read_text())
    head = raw["task_prefix"] + "\nQ: " + raw["examples"][0]["input"] + "\n  choice: "
    assert e.prompt.startswith(head) and e.prompt.endswith("\nA: ")
    assert sorted(e.prompt[len(head) : -len("\nA: ")].split("\n  choice: ")) == sorted(e.candidates)
    assert e.candidates == tuple(raw["examples"][0]["target_scores"]) and e.gold == 0
    assert len(task_data(tiny(), "bigbench:logical_deduction:five_objects").splits["test"]) == 4


def test_bigbench_prefix_input_format_and_gzipped_tasks():
    ex = by_id("bigbench:movie_dialog_same_or_different", cfg=tiny("data.bigbench_format=prefix_input"))
    e = ex["bigbench:movie_dialog_same_or_different-movie_dialog_same_or_different-2"]
    raw = json.loads(gzip.open(FIXTURE / "bigbench_mc/tasks/movie_dialog_same_or_different/task.json.gz").read())
    assert e.prompt == raw["task_prefix"] + raw["examples"][1]["input"]
    assert e.continuations == (" same", " different") and e.gold == 1


def test_bigbench_malformed_example_names_task_file_and_row(tmp_path):
    mirror = _copy_fixture(tmp_path)
    path = mirror / "bigbench_mc/tasks/winowhy/task.json"
    data = json.loads(path.read_text())
    data["examples"][2]["target_scores"] = {"correct": "yes"}
    path.write_text(json.dumps(data))
    with pytest.raises(bigbench.BigBenchError, match=r"task winowhy: file .*winowhy/task\.json, example 3: .*numbers"):
        load_examples(tiny("data.source=mirror", f"data.mirror_dir={mirror}"), "bigbench:winowhy")


def test_bigbench_reduced_set_is_split_80_10_10():
    d = task_data(tiny(), "bigbench:movie_dialog_same_or_different")
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 6, "tune": 1, "test": 8, "heldout": 1}
    assert tasks.reduced_bigbench_tasks()[0] == "bigbench:movie_dialog_same_or_different"


def test_task_names_expand_bigbench_to_available_selected_tasks():
    names = task_names(load_config("tiny"))
    assert names[:6] == ["xnli", "rte", "cb", "pawsx", "boolq", "sst2"]
    bb = names[6:]
    assert len(bb) == 2 and set(bb) < {f"bigbench:{t}" for t in ("winowhy", "movie_dialog_same_or_different",
                                                                    "logical_deduction")}


def test_bigbench_exclude_leaves_tasks_out_before_sampling_and_rejects_unknown_names():
    full = [t for t in task_names(load_config("tiny", ["data.max_bigbench_tasks=null"])) if t.startswith("bigbench:")]
    dropped = full[0].split(":", 1)[1]
    kept = task_names(load_config("tiny", ["data.max_bigbench_tasks=null", f"data.bigbench_exclude=[{dropped}]"]))
    assert [t for t in kept if t.startswith("bigbench:")] == full[1:]
    with pytest.raises(TaskDataError, match="not_a_task.*bigbench_selection.csv"):
        task_names(load_config("tiny", ["data.bigbench_exclude=[not_a_task]"]))


def _task(tmp_path: Path, name: str, keywords: list[str], inputs: list[str], preferred="multiple_choice_grade"):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    examples = [{"input": text, "target_scores": {"yes": 1, "no": 0}} for text in inputs]
    (folder / "task.json").write_text(json.dumps({"name": name, "keywords": keywords, "preferred_score": preferred,
                                                  "examples": examples}, ensure_ascii=False))


def test_selection_rule_on_fixture_tasks(tmp_path):
    _task(tmp_path, "plain", ["multiple choice"], ["Is the sky blue?"])
    _task(tmp_path, "tagged", ["non-English"], ["Is the sky blue?"])
    _task(tmp_path, "script", ["multiple choice"], ["क्या आसमान नीला है?"])
    _task(tmp_path, "chess", ["non-language"], ["1. e4 e5"])
    _task(tmp_path, "exact", [], ["2+2?"], preferred="exact_str_match")
    table = bigbench.selection_table(tmp_path, progress=False).set_index("task")
    assert table.loc["plain", "selected"] and table.loc["plain", "reason"] == "selected"
    assert table.loc["tagged", "reason"] == "keyword non-English"
    assert table.loc["script", "reason"].startswith("ASCII letter share 0.")
    assert table.loc["chess", "reason"] == "keyword non-language"
    assert table.loc["exact", "reason"] == "preferred score exact_str_match"


def test_committed_selection_csv():
    table = bigbench.read_selection()
    assert len(table) == 117 and int((table["selected"].astype(str) == "True").sum()) == 88
    selected = set(bigbench.selected_tasks())
    assert set(bigbench.REDUCED_SET) <= selected and "hyperbaton" in selected
    assert {"kannada", "mnist_ascii", "arithmetic", "simple_arithmetic_json_multiple_choice"}.isdisjoint(selected)
    assert (table.loc[table["selected"].astype(str) != "True", "reason"] != "selected").all()
    assert int((table["in_mirror"].astype(str) == "False").sum()) == 3


# With the real mirror --------------------------------------------------------------------------------------------


@needs_mirror
def test_evaluation_counts_equal_the_papers():
    cfg = load_config("smoke", ["data.max_examples_per_task=null"])
    assert {t: len(load_examples(cfg, t)) for t in EVAL_COUNTS} == EVAL_COUNTS
    assert len(load_examples(load_config("smoke", ["data.max_examples_per_task=null", "data.pawsx_eval_split=dev"]),
                             "pawsx")) == 2000
    assert {split_info(cfg, t).sizes["train"] for t in ("xnli", "sst2")} == {9000, 60614}
    assert sum(split_info(cfg, t).skipped.__len__() for t in EVAL_COUNTS) == 0


@needs_mirror
def test_smoke_subsample_and_bigbench_tasks_from_the_mirror():
    cfg = load_config("smoke")
    names = task_names(cfg)
    assert len(names) == 6 + cfg.data.max_bigbench_tasks
    xs = load_examples(cfg, "xnli")
    assert len(xs) == cfg.data.max_examples_per_task and {e.gold for e in xs} == {0, 1, 2}
    sizes = task_data(cfg, "bigbench:vitaminc_fact_verification").info.sizes
    assert sizes == {"train": 43734, "tune": 5467, "test": 54668, "heldout": 5467}


@needs_mirror
def test_selection_csv_matches_the_rule_on_the_mirror():
    table = bigbench.selection_table(REAL / bigbench.MIRROR_TASKS, progress=False).set_index("task")
    committed = bigbench.read_selection().set_index("task")
    assert len(table) == 114
    for task, row in table.iterrows():
        ours = (str(committed.loc[task, "selected"]), committed.loc[task, "reason"])
        assert (str(row["selected"]), row["reason"]) == ours, task


def test_bigbench_sdist_is_checked_and_only_task_files_extracted(tmp_path, monkeypatch):
    import hashlib
    import io
    import tarfile

    root = tmp_path / "cache" / f"bigbench-{bigbench.BIGBENCH_VERSION}"
    root.mkdir(parents=True)
    sdist = root / bigbench.BIGBENCH_SDIST
    with tarfile.open(sdist, "w:gz") as tf:
        for name, data in {
            "bigbench-1.0.0/bigbench/benchmark_tasks/winowhy/task.json": (FIXTURE / WINOWHY).read_bytes(),
            "bigbench-1.0.0/bigbench/benchmark_tasks/winowhy/README.md": b"readme",
            "bigbench-1.0.0/bigbench/api/json_task.py": b"code",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(bigbench.BigBenchError, match="sha256 .* is not the expected"):
        bigbench.fetch_bigbench_sdist(tmp_path / "cache")
    monkeypatch.setattr(bigbench, "BIGBENCH_SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    tasks_dir = bigbench.fetch_bigbench_sdist(tmp_path / "cache")
    assert sorted(str(p.relative_to(tasks_dir)) for p in tasks_dir.rglob("*") if p.is_file()) == ["winowhy/task.json"]
    sdist.unlink()
    assert bigbench.fetch_bigbench_sdist(tmp_path / "cache") == tasks_dir  # extracted once, reused
    cfg = tiny("data.source=hub", f"data.bigbench_dir={tasks_dir}")
    assert len(load_examples(cfg, "bigbench:winowhy")) == 9
