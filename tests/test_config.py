from pathlib import Path

import pytest

from brdlib.config import (
    CONFIG_DIR,
    RECIPES,
    REPO_ROOT,
    Config,
    ConfigError,
    TrainRecipe,
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
    t = load_config("paper").recipe("brd")
    assert (t.learning_rate, t.batch_size, t.max_length, t.max_steps, t.save_steps) == (3e-4, 8, 2048, 40_000, 1_000)
    assert load_config("paper").recipe("further").max_steps == 18_000  # §4


def test_training_defaults_are_the_papers_when_a_profile_omits_them(tmp_path):
    text = Path(load_config.__globals__["CONFIG_DIR"] / "tiny.yaml").read_text()
    body = text.split("\ntrain:")[0]
    recipes = "\nrecipes:" + text.split("\nrecipes:")[1].split("\n\n")[0] + "\n"
    path = tmp_path / "mine.yaml"
    path.write_text(body + recipes)
    t = load_config(path).train
    assert (t.learning_rate, t.batch_size, t.max_length, t.save_steps) == (3e-4, 8, 2048, 1_000)
    assert load_config(path).profile == "mine"


# Training recipes --------------------------------------------------------------------------------------------------


def test_tiny_recipes_resolve_to_the_values_of_the_old_fallbacks():
    cfg = load_config("tiny")
    got = {name: (r.max_steps, r.batch_size, r.max_length, r.learning_rate, r.optim)
           for name in RECIPES for r in [cfg.recipe(name)]}
    assert got == {"brd": (3, 2, 128, 3e-4, "adamw_torch"), "further": (2, 2, 128, 3e-4, "adamw_torch"),
                   "ablation": (2, 2, 128, 3e-4, "adamw_torch"), "task": (2, 2, 128, 3e-4, "adamw_torch"),
                   "kd": (2, 2, 64, 1e-4, "adamw_torch"), "kd_brd": (1, 1, 32, 3e-4, "adamw_torch")}
    t = cfg.recipe("kd_brd")
    assert isinstance(t, TrainRecipe) and t.recipe == "kd_brd" and t.save_steps == cfg.train.save_steps
    assert (t.key("max_length"), t.key("max_steps"), t.key("learning_rate")) == (
        "recipes.kd_brd.max_length", "recipes.kd_brd.max_steps", "train.learning_rate")
    assert cfg.recipe("task", save_steps=1).save_steps == 1 and cfg.recipe("task").save_steps == 2


def test_smoke_and_paper_recipes_keep_their_values():
    smoke, paper = load_config("smoke"), load_config("paper")
    assert [smoke.recipe(n).max_steps for n in RECIPES] == [12, 5, 2, 4, 2, 1]
    assert [paper.recipe(n).max_steps for n in RECIPES] == [40_000, 18_000, 40_000, 2_000, 10_000, 40_000]
    kd, kd_brd = smoke.recipe("kd"), smoke.recipe("kd_brd")
    assert (kd.optim, kd.gradient_checkpointing, kd.mmap_threshold_kib, kd.learning_rate) == (
        "adafactor_torch", True, 256, 1e-5)
    assert (kd_brd.optim, kd_brd.batch_size, kd_brd.max_length, kd_brd.gradient_checkpointing) == (
        "adafactor_torch", 2, 256, True)
    assert (smoke.recipe("task").batch_size, smoke.recipe("task").max_length) == (2, 256)
    assert not smoke.recipe("brd").gradient_checkpointing and smoke.recipe("brd").mmap_threshold_kib is None
    assert paper.recipe("kd_brd").max_length == 1024 and paper.recipe("kd_brd").batch_size == 8


def test_unknown_recipe_name_is_refused_naming_it():
    cfg = load_config("tiny")
    with pytest.raises(ConfigError, match=r"unknown training recipe 'brd3'; accepted: brd, further, ablation, task, "
                                          r"kd, kd_brd"):
        cfg.recipe("brd3")
    with pytest.raises(ConfigError, match=r"'sft' is not a key of recipes; accepted: brd, further"):
        load_config("tiny", ["recipes.sft.max_steps=3"])


def test_a_profile_missing_a_recipe_or_naming_an_unknown_one_is_refused(tmp_path):
    text = (CONFIG_DIR / "tiny.yaml").read_text()
    without = text.replace("  kd_brd:\n    description: Table 4's '+BRD' of each KD student\n", "  kd_brdx:\n")
    assert without != text
    with pytest.raises(ConfigError, match=r"recipes must name exactly brd, further, ablation, task, kd, kd_brd; "
                                          r"missing: kd_brd; unknown: kd_brdx"):
        load_config(_write(tmp_path / "p.yaml", without))
    with pytest.raises(ConfigError, match=r"recipes\.brd\.max_steps"):
        load_config("tiny", ["recipes.brd.max_steps=0"])
    with pytest.raises(ConfigError, match=r"unknown key 'recipes.brd.max_stpes'.*did you mean 'max_steps'"):
        load_config("tiny", ["recipes.brd.max_stpes=2"])


def test_recipe_overrides_on_the_command_line():
    cfg = load_config("tiny", ["recipes.kd_brd.max_steps=3", "recipes.task.batch_size=4"])
    assert cfg.recipe("kd_brd").max_steps == 3 and cfg.recipe("kd_brd").max_length == 32
    assert cfg.recipe("task").batch_size == 4 and cfg.recipe("brd").batch_size == cfg.train.batch_size == 2
    assert load_config("tiny", ["train.batch_size=8"]).recipe("ablation").batch_size == 8  # null: train's


def test_the_old_step_keys_are_gone():
    for key in ("train.max_steps", "train.further_max_steps", "protocols.ablation_max_steps",
                "protocols.task_max_steps", "protocols.task_batch_size", "kd.max_steps", "kd.brd_max_length",
                "kd.optim", "kd.gradient_checkpointing"):
        with pytest.raises(ConfigError, match="unknown key"):
            load_config("tiny", [f"{key}=2"])


def test_nested_overrides_are_typed():
    cfg = load_config("tiny", ["recipes.brd.max_steps=7", "train.learning_rate=1e-3", "seed=3",
                               "data.max_examples_per_task=null", "data.tasks=[rte, cb]"])
    assert cfg.recipes.brd.max_steps == 7
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.seed == 3
    assert cfg.data.max_examples_per_task is None
    assert cfg.data.tasks == ["rte", "cb"]


def test_overrides_as_mapping_and_string():
    assert load_config("tiny", {"recipes.brd.max_steps": 9}).recipe("brd").max_steps == 9
    assert load_config("tiny", "recipes.brd.max_steps=5 seed=2").seed == 2
    assert parse_overrides(None) == {}


def test_override_of_a_free_form_mapping():
    cfg = load_config("tiny", ["models.extra.second_teacher=tiny-random:5"])
    assert cfg.models.roles() == {"teacher": "tiny-random:1", "student": "tiny-random:0",
                                  "second_teacher": "tiny-random:5"}


def test_misspelled_override_key_is_named_with_accepted_keys():
    with pytest.raises(ConfigError) as err:
        load_config("smoke", ["train.learning_rat=3"])
    msg = str(err.value)
    assert "train.learning_rat" in msg and "did you mean 'learning_rate'" in msg and "batch_size" in msg


def test_misspelled_key_in_a_profile_file_is_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text((Path(__file__).parent.parent / "configs" / "tiny.yaml").read_text()
                    .replace("  save_steps: 2", "  save_stpes: 2"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "train.save_stpes" in msg and "save_steps" in msg and str(path) in msg


def test_misspelled_top_level_key():
    with pytest.raises(ConfigError, match=r"'sed'.*did you mean 'seed'"):
        load_config("tiny", ["sed=1"])


def test_wrong_types_and_values_are_named():
    with pytest.raises(ConfigError, match=r"recipes\.brd\.max_steps.*'abc'"):
        load_config("tiny", ["recipes.brd.max_steps=abc"])
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
        load_config("tiny", ["recipes.brd.max_steps"])
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

    assert main(["tiny", "recipes.brd.max_steps=4"]) == 0
    assert "max_steps: 4" in capsys.readouterr().out
    assert main(["tiny", "train.max_stp=4"]) == 2
    assert "train.max_stp" in capsys.readouterr().err


# Derived profiles (extends) ------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_extends_merges_the_file_over_its_base(tmp_path):
    _write(tmp_path / "base.yaml", (CONFIG_DIR / "tiny.yaml").read_text())
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nrecipes: {kd: {max_steps: 9}}\n"
                                            "models: {extra: {helper: tiny-random:4}}\ndata: {tasks: [rte]}\n")
    base, cfg = load_config(tmp_path / "base.yaml"), load_config(child, ["seed=5"])
    assert cfg.profile == "child" and cfg.seed == 5
    assert cfg.recipes.kd.max_steps == 9 and cfg.recipes.kd.max_length == base.recipes.kd.max_length == 64
    assert cfg.recipes.brd == base.recipes.brd  # mappings merge key by key, recipes too
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
