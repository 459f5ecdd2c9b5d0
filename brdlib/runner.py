"""Execute the study's notebooks in order with papermill (what ``run_all.sh`` calls).

    brd-run smoke recipes.brd.max_steps=10
    brd-run tiny --only 00_setup

Executed copies go to ``runs/<profile>/``; ``runs/<profile>/run_summary.json`` keeps each notebook's time and
peak resident memory (the kernel and its children). Each notebook that ran is also published, cleaned, beside the
tables and figures it wrote, ``figures/<profile>/notebooks/`` (:func:`publish_notebook`): outputs kept, figures as
PNG, long outputs cut, machine paths and timings left out, so a reader of the repository sees the results in place.
The run stops at the first failing notebook, naming it and the failing cell's error, and ends with each notebook's
time and where the tables and figures are.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from brdlib.config import REPO_ROOT, load_config
from brdlib.models import embedded_dtypes

__all__ = [
    "MAX_HTML_CHARS", "MAX_STDERR_LINES", "MAX_STREAM_LINES", "NOTEBOOK_DIR", "OUTPUT_SUFFIXES", "PNG_COLOURS",
    "PUBLISHED_DIR", "STAGES_FILE", "NotebookResult", "PeakMemory", "cell_at", "execute", "prepare_models",
    "produced_files", "publish_notebook", "run", "select", "stage_notebooks", "write_summary",
]

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
STAGES_FILE = NOTEBOOK_DIR / "stages.txt"
OUTPUT_SUFFIXES = {".csv", ".md", ".tex", ".png", ".pdf", ".svg"}
PUBLISHED_DIR = "notebooks"
"""Folder under ``figures/<profile>/`` of the published executed notebooks (:func:`publish_notebook`)."""
MAX_STREAM_LINES = 40
"""Printed output longer than this many lines is published as its first and last halves (the full text stays in
``runs/<profile>/``)."""
MAX_STDERR_LINES = 12
"""The same for the error stream (progress bars, library warnings): kept shorter."""
MAX_HTML_CHARS = 30_000
"""An HTML output larger than this (a long table) is published as its plain-text form, which pandas cuts."""
PNG_COLOURS = 128
"""Figures in the published notebooks are palette PNGs of this many colours (plots lose nothing visible)."""
_DROPPED_MIME = ("application/vnd.jupyter.widget-view+json", "application/javascript", "image/svg+xml", "image/jpeg")


@dataclass
class NotebookResult:
    notebook: str
    seconds: float
    ok: bool
    output: str
    error: str = ""
    peak_rss_gb: float | None = None  # resident memory of this process and its children (the kernel), at peak
    peak_cell: str | None = None  # the executed notebook's cell running when the summed RSS was highest


class PeakMemory:
    """The peak resident memory of this process and every descendant (papermill's kernel and what it starts) while
    in the ``with`` block: their summed RSS sampled every ``interval`` seconds, and each child's own kernel-kept
    peak (Linux ``VmHWM``), so a spike shorter than the interval in one process is not missed."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval, self.peak_bytes = interval, 0
        self.peak_at: float | None = None  # wall-clock time (time.time()) of the highest summed sample
        self._peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return round(self.peak_bytes / 1e9, 2)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                # a child's VmHWM is its peak since it started (in the block: papermill starts a kernel per
                # notebook); this process's own is its lifetime's, so only its current size counts
                hwm = _hwm_bytes(proc.pid) if proc.pid != me.pid else 0
                self.peak_bytes = max(self.peak_bytes, rss, hwm)
            self.peak_bytes = max(self.peak_bytes, total)
            if total > self._peak_total:
                self._peak_total, self.peak_at = total, time.time()
            if self._stop.wait(self.interval):
                return


def _hwm_bytes(pid: int) -> int:
    """A process's peak resident memory as Linux keeps it (``VmHWM``); 0 where there is no /proc."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stage_notebooks(stages_file: Path | None = None) -> list[Path]:
    """The notebooks run_all executes, in order: ``notebooks/stages.txt`` minus comments and blanks."""
    stages_file = stages_file or STAGES_FILE
    names = [ln.split("#", 1)[0].strip() for ln in stages_file.read_text().splitlines()]
    paths = [stages_file.parent / n for n in names if n]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{stages_file} lists notebooks that do not exist: {', '.join(missing)}")
    return paths


def select(notebooks: list[Path], only: Sequence[str] | None) -> list[Path]:
    """Keep the notebooks whose name starts with one of ``only`` (e.g. '00', '01_teacher')."""
    if not only:
        return notebooks
    names = ", ".join(nb.stem for nb in notebooks)
    overrides = [o for o in only if "=" in o]
    if overrides:  # argparse's --only takes every word after it: an override there would be dropped silently
        raise ValueError(f"--only takes stage names, not {' '.join(overrides)}: put key=value overrides before "
                         f"--only (brd run PROFILE key=value ... --only NN ...); stages: {names}")
    unmatched = [o for o in only if not any(nb.name.startswith(o) for nb in notebooks)]
    if unmatched:
        raise ValueError(f"--only {' '.join(unmatched)} matches no stage; stages: {names}")
    return [nb for nb in notebooks if any(nb.name.startswith(o) for o in only)]


def execute(
    notebook: Path, out_dir: Path, profile: str, overrides: list[str], log_output: bool = False
) -> NotebookResult:
    """Run one notebook with papermill; a failure is returned, not raised, with the cell's error."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / notebook.name
    start = time.perf_counter()
    with PeakMemory() as memory:
        error = _execute(pm, notebook, output, profile, overrides, log_output)
    return NotebookResult(notebook.name, time.perf_counter() - start, not error, str(output), error, memory.peak_gb,
                          cell_at(output, memory.peak_at))


def _execute(pm: Any, notebook: Path, output: Path, profile: str, overrides: list[str], log_output: bool) -> str:
    """papermill's execution of one notebook: '' when it ran, else the failing cell and its error."""
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters={"profile": profile, "overrides": list(overrides)},
            cwd=str(notebook.parent),
            kernel_name="python3",
            progress_bar=sys.stderr.isatty(),
            log_output=log_output,
        )
    except pm.PapermillExecutionError as err:
        return f"{_failing_cell(output)}: {err.ename}: {err.evalue}"
    return ""


def _source_cells(executed: Path) -> list[tuple[int, Any]]:
    """The executed notebook's cells numbered 1-based as in the source notebook (papermill's cells left out)."""
    import nbformat

    cells = [c for c in nbformat.read(executed, as_version=4).cells
             if not {"injected-parameters", "papermill-error-cell-tag"} & set(c.metadata.get("tags", []))]
    return list(enumerate(cells, 1))


def _cell_label(number: int, cell: Any) -> str:
    return f"cell {number} (`{(cell.source.strip().splitlines() or [''])[0][:80]}`)"


def cell_at(executed: Path, when: float | None) -> str | None:
    """'cell N (`first line`)' of the executed notebook's cell that was running at ``when`` (``time.time()``), from
    papermill's start and end times; None if none was."""
    import datetime as dt

    if when is None or not executed.is_file():
        return None
    for number, cell in _source_cells(executed):
        times = cell.metadata.get("papermill", {})
        if times.get("start_time") and times.get("end_time"):
            start, end = (dt.datetime.fromisoformat(times[k].replace("Z", "+00:00")).timestamp()
                          for k in ("start_time", "end_time"))
            if start <= when <= end:
                return _cell_label(number, cell)
    return None


def _failing_cell(executed: Path) -> str:
    """'cell N (`first line`)' of the cell that raised, N counted 1-based in the source notebook."""
    for number, cell in _source_cells(executed):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return _cell_label(number, cell)
    return "a cell"


def publish_notebook(executed: Path, folder: Path, runs_note: str = "runs/") -> Path:
    """Write a cleaned copy of the executed notebook ``executed`` into ``folder`` (same name) and return its path.

    Kept: every cell and its outputs, PNG figures (matplotlib's inline PNGs, as palette PNGs of :data:`PNG_COLOURS`
    colours), tables (HTML up to :data:`MAX_HTML_CHARS`, else their text form). Left out: widget state and views,
    SVG/JPEG/JavaScript copies, papermill's per-cell timings and paths, execution metadata. Printed output over
    :data:`MAX_STREAM_LINES` lines (:data:`MAX_STDERR_LINES` on stderr) is cut in the middle, progress bars' carriage
    returns resolved first, naming ``runs_note`` for the full text; the repository's path, its parent's and the home
    folder in outputs become ``.``, ``..`` and ``~``."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    nb.metadata.pop("widgets", None)
    params = nb.metadata.get("papermill", {}).get("parameters")
    nb.metadata.pop("papermill", None)
    if params is not None:
        nb.metadata["papermill"] = {"parameters": params}
    for cell in nb.cells:
        for key in ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = [_clean_output(o, runs_note) for o in _joined_streams(cell.outputs)]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / executed.name
    tmp = out.with_suffix(".ipynb.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(out)
    return out


def _joined_streams(outputs: list[Any]) -> list[Any]:
    """Consecutive printed outputs of the same stream (stdout, stderr) as one, so the cut sees the whole text."""
    joined: list[Any] = []
    for output in outputs:
        last = joined[-1] if joined else None
        if (output.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream"
                and last.get("name") == output.get("name")):
            last["text"] = last.get("text", "") + output.get("text", "")
        else:
            joined.append(output)
    return joined


def _smaller_png(encoded: str, colours: int = PNG_COLOURS) -> str:
    """A base64 PNG as a palette PNG of ``colours`` colours when that is smaller (plots: about a third), else as is."""
    import base64
    import io

    from PIL import Image

    try:
        raw = base64.b64decode(encoded)
        image = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
        buffer = io.BytesIO()
        image.save(buffer, "PNG", optimize=True)
    except (OSError, ValueError):  # not a PNG Pillow reads: published as it is
        return encoded
    return base64.b64encode(buffer.getvalue()).decode() if buffer.tell() < len(raw) else encoded


def _clean_text(text: str) -> str:
    """Machine paths out of an output's text: the repository root as '.', its parent folder (where the data mirror
    sits) as '..', the home folder as '~'."""
    text = text.replace(str(REPO_ROOT) + "/", "./").replace(str(REPO_ROOT), ".")
    if REPO_ROOT.parent != Path(REPO_ROOT.anchor):
        text = text.replace(str(REPO_ROOT.parent) + "/", "../")
    return text.replace(str(Path.home()) + "/", "~/")


def _cut_stream(text: str, runs_note: str, limit: int = MAX_STREAM_LINES) -> str:
    """A stream's text with each line's progress-bar redraws (carriage returns) resolved, cut in the middle when
    longer than ``limit`` lines."""
    lines = [ln.rstrip("\r").rsplit("\r", 1)[-1] for ln in text.split("\n")]
    if len(lines) > limit:
        half = limit // 2
        note = f"[... {len(lines) - 2 * half} lines left out here; the whole output: {runs_note}]"
        lines = [*lines[:half], note, *lines[-half:]]
    return "\n".join(lines)


def _clean_output(output: Any, runs_note: str) -> Any:
    """One output cleaned as :func:`publish_notebook` says."""
    if output.get("output_type") == "stream":
        limit = MAX_STDERR_LINES if output.get("name") == "stderr" else MAX_STREAM_LINES
        output["text"] = _clean_text(_cut_stream(output.get("text", ""), runs_note, limit))
        return output
    data = output.get("data")
    if data is None:
        return output
    for mime in _DROPPED_MIME:
        if mime in data and len(data) > 1:  # another form stays (matplotlib's PNG, the text)
            data.pop(mime)
    if len(str(data.get("text/html", ""))) > MAX_HTML_CHARS and "text/plain" in data:
        data.pop("text/html")
    if isinstance(data.get("image/png"), str):
        data["image/png"] = _smaller_png(data["image/png"].replace("\n", ""))
    for mime in ("text/plain", "text/html", "text/markdown"):
        if isinstance(data.get(mime), str):
            data[mime] = _clean_text(data[mime])
    output.get("metadata", {}).pop("application/vnd.jupyter.widget-view+json", None)
    return output


def produced_files(directory: Path, since: float) -> list[Path]:
    """Tables and figures under ``directory`` written at or after ``since`` (epoch seconds)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*")
                  if p.suffix in OUTPUT_SUFFIXES and p.is_file() and p.stat().st_mtime >= since - 1)


def run(profile: str, overrides: Sequence[str] = (), only: Sequence[str] | None = None,
        log_output: bool = False) -> list[NotebookResult]:
    """Execute the stages for ``profile`` in order, stopping at the first failure."""
    cfg = load_config(profile, list(overrides))  # fail on a bad profile before starting any kernel
    if Path(profile).is_file():
        profile = str(Path(profile).resolve())  # the kernels run in notebooks/
    notebooks = select(stage_notebooks(), only)
    print(f"brd: {len(notebooks)} notebook(s) on profile {cfg.profile!r} -> {cfg.runs_dir}")
    print(f"brd: {cfg.caption()}")
    started = time.time()
    prepared = prepare_models(cfg)
    if prepared is not None:
        write_summary(cfg.runs_dir, cfg.profile, list(overrides), [], prepared)
    results: list[NotebookResult] = []
    for nb in notebooks:
        print(f"brd: running {nb.name} ...", flush=True)
        result = execute(nb, cfg.runs_dir, profile, list(overrides), log_output=log_output)
        results.append(result)
        print(f"brd: {nb.name} {'done' if result.ok else 'FAILED'} in {result.seconds:.1f}s", flush=True)
        write_summary(cfg.runs_dir, cfg.profile, list(overrides), results)  # after each: a kill keeps the times
        if not result.ok:
            break
        publish_notebook(Path(result.output), cfg.figures_dir / PUBLISHED_DIR,
                         f"runs/{cfg.profile}/{nb.name} after ./run_all.sh {cfg.profile}")
    _print_summary(results, produced_files(cfg.figures_dir, started), cfg.figures_dir)
    return results


def prepare_models(cfg: Any) -> dict | None:
    """Convert the profile's embedded models once (``brd-models prepare``), before any notebook, in a child process
    whose time and peak memory are measured: a first-run install, kept apart from the notebooks' figures. None when
    the profile uses no embedded model."""
    import subprocess

    wanted = embedded_dtypes(cfg)
    if not wanted:
        return None
    start = time.perf_counter()
    with PeakMemory() as memory:
        for name, dtypes in wanted.items():
            command = ["prepare", name, *(f"--dtype={d}" for d in dtypes)]
            if subprocess.run([sys.executable, "-m", "brdlib.cli", "models", *command], check=False).returncode:
                raise RuntimeError(f"preparing the embedded model {name} failed; its error is above; rerun: "
                                   f"brd-models {' '.join(command)}")
    seconds = time.perf_counter() - start
    print(f"brd: models ready in {seconds:.1f}s (peak {memory.peak_gb:.2f} GB)", flush=True)
    return {"models": dict(wanted), "seconds": round(seconds, 1), "peak_rss_gb": memory.peak_gb}


def write_summary(runs_dir: Path, profile: str, overrides: list[str], results: list[NotebookResult],
                  prepared: dict | None = None) -> dict:
    """Write ``runs/<profile>/run_summary.json``: each stage's latest result, in stage order, and their total.

    A partial run (``--only``) with the same profile and overrides updates its notebooks and keeps the others'
    earlier results, so the file always describes the whole study; other overrides start a new summary.
    ``prepared``: the model preparation before the notebooks (:func:`prepare_models`), kept out of the totals."""
    path = runs_dir / "run_summary.json"
    earlier: dict[str, dict] = {}
    old: dict = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("profile") != profile or old.get("overrides") != overrides:
            old = {}
        earlier = {n["notebook"]: n for n in old.get("notebooks", [])}
    finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    latest = {**earlier, **{r.notebook: {**asdict(r), "finished": finished} for r in results}}
    order = {nb.name: i for i, nb in enumerate(stage_notebooks())}
    notebooks = sorted(latest.values(), key=lambda n: order.get(n["notebook"], len(order)))
    peaks = [n["peak_rss_gb"] for n in notebooks if n.get("peak_rss_gb") is not None]
    summary = {"profile": profile, "overrides": overrides, "notebooks": notebooks,
               "total_seconds": round(sum(n["seconds"] for n in notebooks), 1),
               "peak_rss_gb": max(peaks) if peaks else None,
               "prepare_models": prepared or old.get("prepare_models")}
    runs_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return summary


def _print_summary(results: list[NotebookResult], files: list[Path], figures_dir: Path) -> None:
    print("\nbrd: notebook                          time   peak RSS  status")
    for r in results:
        peak = f"{r.peak_rss_gb:6.2f} GB" if r.peak_rss_gb is not None else " " * 9
        print(f"brd: {r.notebook:35s} {r.seconds:7.1f}s {peak}  {'ok' if r.ok else 'FAILED'}")
    peaks = [r.peak_rss_gb for r in results if r.peak_rss_gb is not None]
    print(f"brd: {'total':35s} {sum(r.seconds for r in results):7.1f}s {max(peaks) if peaks else 0:6.2f} GB")
    failed = [r for r in results if not r.ok]
    if failed:
        r = failed[0]
        print(f"\nbrd: FAILED in {r.notebook}, {r.error}\nbrd: the executed copy with the traceback: {r.output}",
              file=sys.stderr)
        return
    print(f"\nbrd: executed notebooks in {Path(results[0].output).parent}, published with their outputs in "
          f"{figures_dir / PUBLISHED_DIR}" if results else "")
    print(f"brd: tables and figures in {figures_dir}:")
    for f in files:
        print(f"brd:   {f.relative_to(figures_dir)}")
