"""Shared fixtures: offline hub, and an isolated model cache for tests that write one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point brd's model cache at a fresh temporary directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BRD_CACHE_DIR", str(cache))
    return cache


class TinyStudy:
    """One run of every stage of ``notebooks/stages.txt`` on the tiny profile, in order, into one output root
    (as ``./run_all.sh tiny`` does), shared by every notebook test so each notebook executes once per session."""

    OVERRIDES = ("models.extra.second_teacher=tiny-random:2",)  # a second teacher, so Table 6 is exercised

    def __init__(self, root):
        from brdlib.runner import run

        self.root = root
        self.results = {Path(r.notebook).stem: r for r in run("tiny", [f"output_root={root}", *self.OVERRIDES])}
        self.figures = root / "figures" / "tiny"
        self.runs = root / "runs" / "tiny"

    def config(self):
        """The tiny profile with this study's output root and overrides, to read what the stages saved."""
        from brdlib.config import load_config

        return load_config("tiny", [f"output_root={self.root}", *self.OVERRIDES])

    def result(self, stem: str):
        """The stage's result; fails naming the stage that stopped the run when ``stem`` was never reached."""
        if stem not in self.results:
            failed = [s for s, r in self.results.items() if not r.ok]
            pytest.fail(f"stage {stem} did not run: the tiny study stopped at {failed or 'nothing (not a stage?)'}")
        return self.results[stem]

    def executed(self, stem: str):
        """The executed notebook, after checking that the stage ran without an error output."""
        import nbformat

        result = self.result(stem)
        assert result.ok, result.error
        nb = nbformat.read(self.runs / f"{stem}.ipynb", as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, errors
        return nb


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> TinyStudy:
    """The tiny study, executed once per test session (slow: every notebook)."""
    return TinyStudy(tmp_path_factory.mktemp("tiny_study"))
