"""The install files agree with each other, and the accelerate configurations parse."""

import pytest
import tomllib
import yaml

from brdlib.config import REPO_ROOT


def test_pyproject_extras():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(d.startswith("vllm") for d in extras["gpu"])
    assert any(d.startswith("pytest") for d in extras["dev"])
    assert any(d.startswith("jupyterlab") for d in extras["dev"]) and extras["notebook"]  # tests/test_lab.py
    assert any(d.startswith("papermill") for d in project["dependencies"])


def test_environment_yml_installs_this_package_with_the_gpu_extra():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(line.startswith("-e") and "gpu" in line for line in pip)


def test_env_script_pins_the_cpu_torch():
    assert 'torch==2.13.0' in (REPO_ROOT / "scripts" / "ensure_env.sh").read_text()


@pytest.mark.parametrize("name", ["ddp_4gpu", "fsdp_4gpu", "cpu_2proc"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO_ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.num_processes in (2, 4)
