from pathlib import Path

import pytest

from brdlib.config import (
    CONFIG_DIR,
    REPO_ROOT,
    Config,
    ConfigError,
    available_profiles,
    load_config,
    merge_profiles,
    parse_overrides,
    raw_profile,
)


@pytest.mark.parametrize("name", ["tiny", "smoke", "paper", "rehearsal"])
def test_shipped_profiles_load(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.profile == name
    assert cfg.models.teacher and cfg.models.student


def test_available_profiles():
    assert {"tiny", "smoke", "paper", "rehearsal"} <= set(available_profiles())


def test_paper_profile_has_the_papers_training_defaults():
    t = load_config("paper").train
    assert (t.learning_rate, t.batch_size, t.max_length, t.max_steps, t.save_steps) == (3e-4, 8, 2048, 40_000, 1_000)


def test_training_defaults_are_the_papers_when_a_profile_omits_them(tmp_path):
    text = Path(load_config.__globals__["CONFIG_DIR"] / "tiny.yaml").read_text()
    body = text.split("\ntrain:")[0]
    path = tmp_path / "mine.yaml"
    path.write_text(body)
    t = load_config(path).train
    assert (t.learning_rate, t.batch_size, t.max_length, t.max_steps, t.save_steps) == (3e-4, 8, 2048, 40_000, 1_000)
    assert load_config(path).profile == "mine"


def test_nested_overrides_are_typed():
    cfg = load_config("tiny", ["train.max_steps=7", "train.learning_rate=1e-3", "seed=3",
                               "data.max_examples_per_task=null", "data.tasks=[rte, cb]"])
    assert cfg.train.max_steps == 7
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.seed == 3
    assert cfg.data.max_examples_per_task is None
    assert cfg.data.tasks == ["rte", "cb"]


def test_overrides_as_mapping_and_string():
    assert load_config("tiny", {"train.max_steps": 9}).train.max_steps == 9
    assert load_config("tiny", "train.max_steps=5 seed=2").seed == 2
    assert parse_overrides(None) == {}


def test_override_of_a_free_form_mapping():
    cfg = load_config("tiny", ["models.extra.second_teacher=tiny-random:5"])
    assert cfg.models.roles() == {"teacher": "tiny-random:1", "student": "tiny-random:0",
                                  "second_teacher": "tiny-random:5"}


def test_misspelled_override_key_is_named_with_accepted_keys():
    with pytest.raises(ConfigError) as err:
        load_config("smoke", ["train.max_step=3"])
    msg = str(err.value)
    assert "train.max_step" in msg and "did you mean 'max_steps'" in msg and "learning_rate" in msg


def test_misspelled_key_in_a_profile_file_is_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text((Path(__file__).parent.parent / "configs" / "tiny.yaml").read_text()
                    .replace("  max_steps: 3", "  max_stpes: 3"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "train.max_stpes" in msg and "max_steps" in msg and str(path) in msg


def test_misspelled_top_level_key():
    with pytest.raises(ConfigError, match=r"'sed'.*did you mean 'seed'"):
        load_config("tiny", ["sed=1"])


def test_wrong_types_and_values_are_named():
    with pytest.raises(ConfigError, match=r"train\.max_steps.*'abc'"):
        load_config("tiny", ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config("tiny", ["train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"device.*'auto', 'cpu', 'cuda' or 'mps'"):
        load_config("tiny", ["device=tpu"])
    with pytest.raises(ConfigError, match=r"data\.corpus"):
        load_config("tiny", ["data.corpus=cc101"])


def test_a_value_is_not_a_section():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config("tiny", ["seed.x=1"])


def test_bad_model_spec_lists_the_accepted_forms():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["models.student=smollm"])
    msg = str(err.value)
    assert "models.student" in msg and "'smollm'" in msg and "smollm2-135m-instruct" in msg and "hub id" in msg


def test_unknown_profile_and_bad_override_syntax():
    with pytest.raises(ConfigError, match="unknown profile 'smok'.*smoke"):
        load_config("smok")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("tiny", ["train.max_steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere/profile.yaml")


def test_text_file_corpus_needs_a_file():
    with pytest.raises(ConfigError, match="corpus_file"):
        load_config("tiny", ["data.corpus=text_file"])
    assert load_config("tiny", ["data.corpus=text_file", "data.corpus_file=/tmp/x.txt"]).data.corpus_file


def test_auto_device_and_dtype(monkeypatch):
    import torch

    cfg = load_config("paper", ["dtype=auto"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert (cfg.resolved_device(), cfg.resolved_dtype()) == ("cpu", "float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert (cfg.resolved_device(), cfg.resolved_dtype()) == ("cuda", "bfloat16")
    assert load_config("smoke", ["dtype=float32"]).resolved_dtype() == "float32"


def test_bfloat16_on_a_cpu_without_it_warns(monkeypatch):
    """smoke reads and trains in bf16, which this project's CPUs compute natively; elsewhere it is emulated and slow."""
    import brdlib.config as config_mod

    cfg = load_config("smoke", ["device=cpu"])
    assert cfg.dtype == "bfloat16"
    monkeypatch.setattr(config_mod, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="dtype=bfloat16 on a CPU without AVX512-BF16/AMX .* set dtype=float32"):
        assert cfg.resolved_dtype() == "bfloat16"


def test_mirror_dir_from_key_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BRD_DATA_DIR", str(tmp_path / "env"))
    assert load_config("tiny").data.resolved_mirror_dir() == tmp_path / "env"
    cfg = load_config("tiny", [f"data.mirror_dir={tmp_path / 'key'}"])
    assert cfg.data.resolved_mirror_dir() == tmp_path / "key"


def test_output_directories_follow_the_profile(tmp_path):
    cfg = load_config("tiny", [f"output_root={tmp_path}"])
    assert cfg.data_dir == tmp_path / "data" / "tiny"
    assert cfg.figures_dir == tmp_path / "figures" / "tiny"
    assert cfg.runs_dir == tmp_path / "runs" / "tiny"
    assert "tiny" in cfg.caption() and "meaningless" in cfg.caption()


def test_cli_prints_profile_and_fails_cleanly(capsys):
    from brdlib.cli import config_main as main

    assert main(["tiny", "train.max_steps=4"]) == 0
    assert "max_steps: 4" in capsys.readouterr().out
    assert main(["tiny", "train.max_stp=4"]) == 2
    assert "train.max_stp" in capsys.readouterr().err


# Derived profiles (extends) ------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_extends_merges_the_file_over_its_base(tmp_path):
    _write(tmp_path / "base.yaml", (CONFIG_DIR / "tiny.yaml").read_text())
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\ntrain: {max_steps: 9}\n"
                                            "models: {extra: {helper: tiny-random:4}}\ndata: {tasks: [rte]}\n")
    base, cfg = load_config(tmp_path / "base.yaml"), load_config(child, ["seed=5"])
    assert cfg.profile == "child" and cfg.seed == 5
    assert cfg.train.max_steps == 9 and cfg.train.batch_size == base.train.batch_size  # mappings merge key by key
    assert cfg.data.tasks == ["rte"]  # lists replace
    assert cfg.models.extra == {**base.models.extra, "helper": "tiny-random:4"}
    assert raw_profile(child)["profile"] == "child" and "extends" not in raw_profile(child)


def test_extends_a_named_profile_and_its_errors(tmp_path):
    assert load_config(_write(tmp_path / "p.yaml", "extends: paper\nseed: 3\n")).models == load_config("paper").models
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_config(_write(tmp_path / "a.yaml", "extends: nope\n"))
    with pytest.raises(ConfigError, match="'extends' must name a profile"):
        load_config(_write(tmp_path / "b.yaml", "extends: [paper]\n"))
    _write(tmp_path / "c.yaml", "extends: d.yaml\n")
    with pytest.raises(ConfigError, match="cycle \\(d -> c -> d\\)"):
        load_config(_write(tmp_path / "d.yaml", "extends: c.yaml\n"))
    with pytest.raises(ConfigError, match="unknown key 'train.max_stepz'"):
        load_config(_write(tmp_path / "e.yaml", "extends: paper\ntrain: {max_stepz: 3}\n"))


def test_merge_profiles_replaces_with_null():
    assert merge_profiles({"kd": {"released": {"skd": "a"}, "x": 1}}, {"kd": {"released": None}}) == {
        "kd": {"released": None, "x": 1}}


def test_hub_fixture_dir_needs_the_hub_source():
    with pytest.raises(ConfigError, match="data.hub_fixture_dir stands in for the hub.*got source='fixture'"):
        load_config("tiny", ["data.hub_fixture_dir=tests/fixtures/hub"])
    cfg = load_config("paper", ["data.hub_fixture_dir=tests/fixtures/hub"])
    assert cfg.data.resolved_hub_fixture_dir() == REPO_ROOT / "tests" / "fixtures" / "hub"
    assert load_config("paper").data.resolved_hub_fixture_dir() is None
