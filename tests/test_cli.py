"""brdlib.cli: one entry for every command; a bad command or profile is one error line and exit 2."""

from __future__ import annotations

import subprocess
import sys

from brdlib import cli
from brdlib.config import REPO_ROOT


def test_every_command_is_reachable_from_brd(capsys):
    assert set(cli.COMMANDS) == {"run", "config", "models", "assemble", "train", "kd", "bigbench", "report",
                                 "plan", "lm-eval-tasks", "lab"}
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'; accepted: run, config, models, assemble, train, kd, bigbench, report, plan, " \
           "lm-eval-tasks, lab" in capsys.readouterr().err
    assert cli.main(["config", "tiny", "recipes.brd.max_steps=4"]) == 0
    assert "max_steps: 4" in capsys.readouterr().out


def test_a_bad_override_is_one_error_line(capsys):
    assert cli.main(["train", "tiny", "recipes.brd.max_stp=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'recipes.brd.max_stp'" in err[0] and "max_steps" in err[0]
    assert cli.main(["kd", "tiny", "kd.temperature=-1"]) == 2
    assert "kd.temperature" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_commands():
    out = subprocess.run([sys.executable, "-m", "brdlib.cli", "report", "compare", "nowhere", "nowhere"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "nowhere is not a folder" in out.stderr
