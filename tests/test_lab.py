"""``./lab.sh``'s JupyterLab (``brd lab``): the server starts headless on a loopback port, answers its REST API, and
runs a notebook's first cells in the kernel it offers, in the notebook's folder, on the profile ``BRD_PROFILE`` names.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from jupyter_client import BlockingKernelClient

from brdlib.cli import lab_command, lab_main
from brdlib.config import REPO_ROOT

NOTEBOOK = "notebooks/01_teacher_generation.ipynb"


def _get(base: str, token: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {token}"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201), (path, response.status)
        return json.loads(response.read())


def _server_info(runtime: Path, proc: subprocess.Popen, deadline: float) -> dict:
    """The running server's ``jpserver-<pid>.json`` (its port, chosen by the OS for --port=0)."""
    while time.time() < deadline:
        found = list(runtime.glob("jpserver-*.json"))
        if found:
            return json.loads(found[0].read_text())
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("jupyter lab wrote no server file within the deadline")


def _run_cell(client: BlockingKernelClient, source: str) -> list[dict]:
    """Execute one cell; its outputs (stream/result/error messages' content), failing on an error."""
    outputs: list[dict] = []
    reply = client.execute_interactive(source, timeout=120,
                                       output_hook=lambda msg: outputs.append({"type": msg["msg_type"],
                                                                               **msg["content"]}))
    errors = [o for o in outputs if o["type"] == "error"]
    assert reply["content"]["status"] == "ok", errors or reply["content"]
    return outputs


def test_lab_command_names_the_profile_and_refuses_a_bad_one(tmp_path, capsys):
    command, env = lab_command("tiny", ["--no-browser"])
    assert env["BRD_PROFILE"] == "tiny" and env["HF_HUB_OFFLINE"] == os.environ.get("HF_HUB_OFFLINE", "1")
    assert command[:4] == [sys.executable, "-m", "jupyter", "lab"] and command[-1] == "--no-browser"
    assert f"--ServerApp.root_dir={REPO_ROOT}" in command
    profile = tmp_path / "mine.yaml"
    profile.write_text((REPO_ROOT / "configs" / "tiny.yaml").read_text())
    assert lab_command(str(profile))[1]["BRD_PROFILE"] == str(profile.resolve())
    assert lab_main(["no_such_profile", "--no-browser"]) == 2
    assert "no_such_profile" in capsys.readouterr().err


def test_lab_serves_the_notebooks_and_runs_their_first_cells(tmp_path):
    runtime, token = tmp_path / "runtime", secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "brdlib.cli", "lab", "tiny", "--no-browser", "--ServerApp.ip=127.0.0.1",
               "--ServerApp.port=0", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               *(["--allow-root"] if os.geteuid() == 0 else [])]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        info = _server_info(runtime, proc, time.time() + 90)
        base = f"http://127.0.0.1:{info['port']}"
        assert info["root_dir"] == str(REPO_ROOT)
        assert "started" in _get(base, token, "/api/status")
        listed = {k["name"] for k in _get(base, token, "/api/contents/notebooks")["content"]}
        assert Path(NOTEBOOK).name in listed
        specs = _get(base, token, "/api/kernelspecs")
        assert specs["default"] == "python3" and "python3" in specs["kernelspecs"]
        # as JupyterLab opens a notebook: a session on its path starts the kernel in the notebook's folder
        session = _get(base, token, "/api/sessions",
                       {"path": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}})
        client = BlockingKernelClient()
        client.load_connection_file(runtime / f"kernel-{session['kernel']['id']}.json")
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            cells = [c for c in nbformat.read(REPO_ROOT / NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
            assert "parameters" in cells[0].metadata.get("tags", [])
            for cell in cells[:2]:  # the parameters cell, then imports and load_config(profile)
                _run_cell(client, cell.source)
            shown = _run_cell(client, "import brdlib, os, sys\n"
                                      "print(cfg.profile, os.getcwd(), brdlib.__file__, sys.executable, sep='|')")
            text = "".join(o.get("text", "") for o in shown if o["type"] == "stream")
            profile, cwd, module, python = text.strip().split("|")
            assert profile == "tiny"
            assert Path(cwd) == REPO_ROOT / "notebooks"
            assert Path(module).resolve().parent.parent == REPO_ROOT
            assert Path(python).resolve() == Path(sys.executable).resolve()
        finally:
            client.stop_channels()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("jupyter lab did not stop within 30 s of SIGTERM")
    assert not list(runtime.glob("kernel-*.json")), "the server left a kernel running"
