"""The study repeats: rerun from the same teacher records, every table is the same (measured times apart)."""

from __future__ import annotations

import os
import shutil
import subprocess

import nbformat
import pandas as pd
import pytest
from conftest import TINY_OVERRIDES

from brdlib.cli import report_main as main
from brdlib.config import REPO_ROOT, load_config
from brdlib.report import MEASURED_COLUMNS, compare_tables


def test_compare_tables_names_each_difference_and_leaves_out_measured_times(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    def table(acc, seconds):
        return pd.DataFrame({"role": ["brd", "student"], "acc": acc, "seconds": seconds})

    table([52.0, 50.1], [3.0, 4.0]).to_csv(a / "t.csv", index=False)
    table([52.0, 50.1], [9.0, 1.0]).to_csv(b / "t.csv", index=False)
    assert compare_tables(a, b) == [] and "seconds" in MEASURED_COLUMNS
    assert main(["compare", str(a), str(b)]) == 0 and "identical: 1 tables" in capsys.readouterr().out
    table([52.0, 50.5], [9.0, 1.0]).to_csv(b / "t.csv", index=False)
    (a / "only.csv").write_text("x\n1\n")
    assert compare_tables(a, b) == [f"only.csv: only in {a}", "t.csv: row 1 column 'acc': '50.1' vs '50.5'"]
    assert main(["compare", str(a), str(b)]) == 1


@pytest.mark.slow
def test_a_rerun_from_the_same_teacher_records_gives_the_same_tables(tiny_study, tmp_path_factory):
    """Everything downstream of the teacher's records is bit-repeatable: a second study in a fresh root, given only
    the first one's teacher records, trains, scores and tabulates the same numbers in every CSV. The second study is
    the README's run command, ``./run_all.sh tiny`` through the shell script, end to end (one tiny study, not two)."""
    for stem in tiny_study.results:
        tiny_study.executed(stem)
    first = tiny_study.config().data_dir / "teacher"
    root = tmp_path_factory.mktemp("tiny_rerun")
    shutil.copytree(first, load_config("tiny", [f"output_root={root}", *TINY_OVERRIDES]).data_dir / "teacher")
    env = {**os.environ, "BRD_NO_VENV": os.environ.get("BRD_NO_VENV", "1")}
    proc = subprocess.run([str(REPO_ROOT / "run_all.sh"), "tiny", f"output_root={root}", *TINY_OVERRIDES],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "00_setup.ipynb" in proc.stdout and "00_models.md" in proc.stdout and "total" in proc.stdout
    runs, figures = root / "runs" / "tiny", root / "figures" / "tiny"
    teacher_nb = nbformat.read(runs / "01_teacher_generation.ipynb", as_version=4)
    logged = "".join(o.get("text", "") for c in teacher_nb.cells for o in c.get("outputs", []))
    assert "nothing to generate" in logged  # the records were reused, not made again
    # 01_teacher_run counts this run's work (records reused, not generated): it differs by design
    diffs = compare_tables(tiny_study.figures, figures)
    assert [d for d in diffs if not d.startswith("01_teacher_run.csv:")] == []
    assert len(list(figures.glob("*.csv"))) >= 40
