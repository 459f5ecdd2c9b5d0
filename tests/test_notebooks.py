"""Every notebook is well-formed, and every notebook in run_all's list executes on the tiny profile."""

import json
import re

import nbformat
import pytest

from brdlib.runner import NOTEBOOK_DIR, stage_notebooks

ALL_NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
STAGES = stage_notebooks()


def test_notebooks_are_numbered_uniquely():
    numbers = [nb.name[:2] for nb in ALL_NOTEBOOKS]
    assert numbers == sorted(set(numbers)) and numbers[0] == "00" and len(numbers) == 11


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    ns: dict = {}
    exec(tagged[0].source, ns)
    assert ns["profile"] == "smoke" and ns["overrides"] == []


def test_run_all_runs_every_notebook_in_order():
    """A notebook added to notebooks/ but not to stages.txt would never run, nor be tested below."""
    assert [p.name for p in STAGES] == [p.name for p in ALL_NOTEBOOKS]


def test_stage_list_with_an_unknown_notebook_is_refused(tmp_path):
    stages = tmp_path / "stages.txt"
    stages.write_text("00_setup.ipynb  # the first\n\n99_missing.ipynb\n")
    (tmp_path / "00_setup.ipynb").write_text("{}")
    with pytest.raises(FileNotFoundError, match="99_missing.ipynb"):
        stage_notebooks(stages)
    stages.write_text("00_setup.ipynb  # the first\n")
    assert stage_notebooks(stages) == [tmp_path / "00_setup.ipynb"]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.stem)
def test_stage_executes_on_tiny(path, tiny_study):
    tiny_study.executed(path.stem)
    summary = json.loads((tiny_study.runs / "run_summary.json").read_text())
    assert summary["profile"] == "tiny"
    assert {n["notebook"]: n["ok"] for n in summary["notebooks"]}[path.name] is True


@pytest.mark.slow
def test_setup_notebook_tables_name_profile_and_models(tiny_study):
    tiny_study.executed("00_setup")
    md = (tiny_study.figures / "00_models.md").read_text()
    assert "tiny-random:1" in md and "profile=tiny (tiny, numbers meaningless)" in md
    assert re.search(r"\| teacher .*\| cpu ", md)
    assert (tiny_study.figures / "00_model_sizes.png").stat().st_size > 1000
