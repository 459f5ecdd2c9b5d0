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


class Study:
    """One run of every stage of ``notebooks/stages.txt`` on ``profile``, in order, into one output root (as
    ``./run_all.sh PROFILE`` does), shared by every test that inspects it so each notebook executes once per session."""

    def __init__(self, profile: str, root, overrides=()):
        from brdlib.runner import run

        self.profile, self.root, self.overrides = profile, root, tuple(overrides)
        self.results = {Path(r.notebook).stem: r for r in run(profile, [f"output_root={root}", *self.overrides])}
        self.figures = root / "figures" / profile
        self.runs = root / "runs" / profile

    def config(self):
        """The profile with this study's output root and overrides, to read what the stages saved."""
        from brdlib.config import load_config

        return load_config(self.profile, [f"output_root={self.root}", *self.overrides])

    def result(self, stem: str):
        """The stage's result; fails naming the stage that stopped the run when ``stem`` was never reached."""
        if stem not in self.results:
            failed = [s for s, r in self.results.items() if not r.ok]
            pytest.fail(f"stage {stem} did not run: the {self.profile} study stopped at "
                        f"{failed or 'nothing (not a stage?)'}")
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


TINY_OVERRIDES = ("models.extra.second_teacher=tiny-random:2",)  # a second teacher, so Table 6 is exercised


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory) -> Study:
    """The tiny study, executed once per test session (slow: every notebook)."""
    return Study("tiny", tmp_path_factory.mktemp("tiny_study"), TINY_OVERRIDES)


def vllm_python() -> Path | None:
    """The interpreter of vLLM's own environment (scripts/ensure_vllm_env.sh; ``BRD_VLLM_PYTHON`` overrides), or
    None when there is none. With ``BRD_REQUIRE_VLLM=1`` (.ci/run) a missing one is an error, not a fallback."""
    root = Path(__file__).resolve().parents[1]
    path = Path(os.environ.get("BRD_VLLM_PYTHON") or root / ".venv-vllm" / "bin" / "python")
    if path.is_file():
        return path
    if os.environ.get("BRD_REQUIRE_VLLM") == "1":
        raise RuntimeError(f"BRD_REQUIRE_VLLM=1 but {path} does not exist; run: bash scripts/ensure_vllm_env.sh")
    return None


@pytest.fixture(scope="session")
def rehearsal_study(tmp_path_factory) -> Study:
    """The rehearsal study (the paper profile's every key, tiny models of its architectures, hub-schema fixtures),
    executed once per test session (slow: every notebook). Its teacher runs on vLLM's CPU build, as paper.yaml
    asks, in vLLM's own environment (``teacher.vllm_python``); without that environment (a developer's machine
    that never ran scripts/ensure_vllm_env.sh) on transformers, which the tests that need vLLM then say."""
    python = vllm_python()
    overrides = [f"teacher.vllm_python={python}"] if python else ["teacher.backend=transformers"]
    return Study("rehearsal", tmp_path_factory.mktemp("rehearsal_study"), overrides)
