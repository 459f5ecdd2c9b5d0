"""brdlib.store: the one rule from a model reference to a model, atomic writes, and ensure() building what is missing
through the stage that owns it (and nothing that is already there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from brdlib.config import REPO_ROOT, load_config
from brdlib.store import (
    SUMMARY_FILE,
    StoreError,
    artefact_dir,
    ensure,
    is_trained,
    load_card,
    passages_dir,
    resolve_model,
    student_dir,
    swap_into_place,
    trained_students,
    write_text_atomic,
)
from brdlib.train import TrainError


def tiny_cfg(root: Path, *overrides: str):
    return load_config("tiny", [f"output_root={root}", *overrides])


def fake_student(cfg, name: str, fingerprint: str = "f1") -> Path:
    folder = student_dir(cfg, name)
    folder.mkdir(parents=True)
    (folder / SUMMARY_FILE).write_text(json.dumps({"fingerprint": fingerprint}))
    return folder


def test_resolve_model_takes_roles_then_students_then_specs(tmp_path):
    cfg = tiny_cfg(tmp_path)
    assert resolve_model(cfg, "teacher").spec == cfg.models.teacher
    assert resolve_model(cfg, "teacher").identity == f"tiny-random:{cfg.models.teacher}"
    assert resolve_model(cfg, "teacher").role == "teacher"
    assert resolve_model(cfg, "tiny-random:7").identity == "tiny-random:tiny-random:7"
    folder = fake_student(cfg, "brd")
    assert resolve_model(cfg, "brd").spec == str(folder)
    assert resolve_model(cfg, "brd").identity == "student:brd:f1"
    assert resolve_model(cfg, str(folder)).identity == "dir:f1"  # a directory: by its training fingerprint
    with_dir = tiny_cfg(tmp_path, f"models.extra={{second_teacher: {folder}}}")
    assert resolve_model(with_dir, "second_teacher") == resolve_model(cfg, str(folder)).__class__(
        str(folder), "dir:f1", "second_teacher")
    assert trained_students(cfg) == ["brd"] and is_trained(cfg, "brd") and not is_trained(cfg, "org/model")


def test_resolve_model_names_what_it_accepts(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(StoreError, match=r"'nope' is not a role of profile 'tiny' \(teacher, student\), not a trained "
                                         r"student \(none yet\) and not a model spec: unknown model spec 'nope'"):
        resolve_model(cfg, "nope")
    with pytest.raises(StoreError, match="plain directory name"):
        student_dir(cfg, "../x")


def test_atomic_writes_leave_the_old_or_the_new(tmp_path):
    write_text_atomic(tmp_path / "a" / "b.txt", "one")
    write_text_atomic(tmp_path / "a" / "b.txt", "two")
    assert (tmp_path / "a" / "b.txt").read_text() == "two" and sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "b.txt"]
    out, tmp = tmp_path / "out", tmp_path / ".out.tmp"
    for text in ("first", "second"):
        tmp.mkdir()
        (tmp / "x").write_text(text)
        swap_into_place(tmp, out)
        assert (out / "x").read_text() == text and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]


def test_ensure_refuses_what_it_cannot_build(tmp_path):
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(StoreError, match="'checkpoints/brd'.*folder one of teacher, passages, students"):
        ensure(cfg, "checkpoints/brd")
    with pytest.raises(StoreError, match="cannot ensure 'students': give '<folder>/<name>'"):
        ensure(cfg, "students")
    with pytest.raises(StoreError, match="plain directory name"):
        ensure(cfg, "passages/../x")
    with pytest.raises(TrainError, match="no student is named 'mine'; named students: brd, further"):
        ensure(cfg, "students/mine")
    with pytest.raises(ValueError, match="'nope' is neither assembled \\(none yet\\) nor a known variant"):
        ensure(cfg, "passages/nope")
    assert not artefact_dir(cfg, "students").exists()


@pytest.mark.slow
def test_ensure_builds_a_student_and_its_inputs_once(tmp_path):
    """On a fresh output root: the teacher's records, the passages and the student are built by their stages;
    asked again, nothing is rebuilt (the card and the summary keep their contents and times)."""
    cfg = tiny_cfg(tmp_path, "recipes.brd.max_steps=1")
    ensure(cfg, "students/brd", progress=False)
    card, summary = passages_dir(cfg, "brd") / "card.json", student_dir(cfg, "brd") / SUMMARY_FILE
    assert load_card(cfg, "brd")["variant"] == "brd" and json.loads(summary.read_text())["steps"] == 1
    assert any(artefact_dir(cfg, "teacher").glob("teacher-*/*.jsonl"))
    stamps = (card.stat().st_mtime_ns, summary.stat().st_mtime_ns)
    ensure(cfg, "passages/brd", "students/brd", "teacher/teacher", progress=False)
    assert (card.stat().st_mtime_ns, summary.stat().st_mtime_ns) == stamps


def test_ensure_finds_the_owner_without_it_being_imported(tmp_path):
    """A fresh interpreter that imported only the store still builds a passage variant: ensure imports the stage
    that owns the folder (which registers its builder)."""
    code = ("import sys; from brdlib.config import load_config; from brdlib.store import ensure, load_card; "
            f"cfg = load_config('tiny', ['output_root={tmp_path}']); "
            "assert 'brdlib.assemble' not in sys.modules; ensure(cfg, 'passages/ori', progress=False); "
            "print(load_card(cfg, 'ori')['variant'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "ori"
