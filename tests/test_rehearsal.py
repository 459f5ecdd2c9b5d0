"""The rehearsal profile: paper.yaml's every key, tiny random models of its architectures, hub-schema fixtures."""

from __future__ import annotations

import importlib.util
import json
import lzma
from pathlib import Path
from typing import Any

import pytest
import yaml

from brdlib.config import CONFIG_DIR, REPO_ROOT, load_config, read_profile_file
from brdlib.models import build_tiny_arch, load_model, materialize, resolve_spec
from brdlib.specs import TINY_ARCHS, classify_spec

HUB_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "hub"


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; every mapping (free-form ones too) is opened."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


@pytest.fixture(scope="module")
def paper():
    return load_config("paper")


@pytest.fixture(scope="module")
def rehearsal():
    return load_config("rehearsal")


# The profile -------------------------------------------------------------------------------------------------


def test_rehearsal_loads_and_keeps_the_paper_path(rehearsal):
    assert rehearsal.profile == "rehearsal"
    assert (rehearsal.data.source, rehearsal.data.corpus, rehearsal.teacher.backend) == ("hub", "cc100", "vllm")
    assert rehearsal.data.resolved_hub_fixture_dir() == HUB_FIXTURES
    assert set(rehearsal.models.roles()) == set(load_config("paper").models.roles())


def test_every_paper_key_not_overridden_is_equal(paper, rehearsal):
    ours, theirs = flatten(rehearsal.model_dump(mode="json")), flatten(paper.model_dump(mode="json"))
    overridden = set(flatten(read_profile_file(CONFIG_DIR / "rehearsal.yaml"))) | {"profile"}
    assert set(ours) == set(theirs)
    differ = {k: (theirs[k], ours[k]) for k in theirs if k not in overridden and theirs[k] != ours[k]}
    assert not differ, f"rehearsal differs from paper on keys it does not set: {differ}"


def test_rehearsal_yaml_sets_only_paper_keys_and_only_new_values(paper, rehearsal):
    own = flatten(read_profile_file(CONFIG_DIR / "rehearsal.yaml"))
    assert own.pop("extends") == "paper"
    theirs, ours = flatten(paper.model_dump(mode="json")), flatten(rehearsal.model_dump(mode="json"))
    unknown = sorted(k for k in own if k not in theirs)
    assert not unknown, f"rehearsal.yaml sets keys that paper has no value for: {unknown}"
    repeated = sorted(k for k in own if ours[k] == theirs[k])
    assert not repeated, f"rehearsal.yaml repeats paper's value of {repeated}: drop them"


def test_rehearsal_sizes_fit_its_models(rehearsal):
    from brdlib.train import use_chunked_loss

    student = classify_spec(rehearsal.models.student)
    assert student.kind == "tiny-arch"
    assert rehearsal.train.max_length <= 256  # the tiny XGLM's positions
    xglm, _ = build_tiny_arch("xglm")
    assert use_chunked_loss(rehearsal, xglm.config.vocab_size)
    assert rehearsal.train.loss_chunk_tokens < rehearsal.train.batch_size * rehearsal.train.max_length


def test_loading_the_profile_builds_no_model(tmp_cache):
    load_config("rehearsal")
    assert not (tmp_cache / "tiny-models").exists()


# Tiny architectures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xglm():
    return load_model("tiny-random-xglm")


def test_tiny_xglm_is_xglm_shaped(xglm, rehearsal):
    from transformers.models.xglm.modeling_xglm import XGLMSinusoidalPositionalEmbedding

    model, tok = xglm.model, xglm.tokenizer
    assert (type(model).__name__, type(tok).__name__) == ("XGLMForCausalLM", "XGLMTokenizer")
    ids = tok("Paris is the capital of France.")["input_ids"]
    assert ids[0] == tok.eos_token_id and tok.convert_ids_to_tokens(ids[0]) == "</s>"  # XGLM's `</s> $A`
    assert tok.eos_token_id not in ids[1:]
    assert isinstance(model.model.embed_positions, XGLMSinusoidalPositionalEmbedding)
    assert model.config.vocab_size == len(tok) >= rehearsal.train.chunked_loss_min_vocab
    assert model.config.max_position_embeddings >= rehearsal.train.max_length
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as XGLM


def test_tiny_llama_prepends_bos():
    loaded = load_model("tiny-random-llama:1")
    tok = loaded.tokenizer
    assert (type(loaded.model).__name__, type(tok).__name__) == ("LlamaForCausalLM", "LlamaTokenizer")
    ids = tok("Paris is big. Ω")["input_ids"]
    assert tok.convert_ids_to_tokens(ids[0]) == "<s>" == tok.bos_token
    assert tok.decode(ids, skip_special_tokens=True) == "Paris is big. Ω"  # byte fallback: any text encodes


def test_tiny_gpt2_has_a_small_position_table(rehearsal):
    loaded = load_model("tiny-random-gpt2:1")
    model, tok = loaded.model, loaded.tokenizer
    assert (type(model).__name__, type(tok).__name__) == ("GPT2LMHeadModel", "GPT2Tokenizer")
    assert model.config.n_positions == 64 < rehearsal.train.max_length
    ids = tok("Paris is big.")["input_ids"]
    assert tok.all_special_ids and not set(ids) & set(tok.all_special_ids)  # no start token, as GPT-2


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_tiny_archs_are_seeded_and_materialize(arch, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a, _ = build_tiny_arch(arch, 5)
    b, tok = build_tiny_arch(arch, 5)
    c, _ = build_tiny_arch(arch, 6)
    wa, wb, wc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    folder = materialize(f"tiny-random-{arch}:5", tmp_path / arch)
    again = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(next(again.parameters()), wa)
    reloaded = AutoTokenizer.from_pretrained(folder)
    assert type(reloaded) is type(tok)
    assert reloaded("Paris is big.")["input_ids"] == tok("Paris is big.")["input_ids"]


def test_resolve_builds_the_cache_directory_once(tmp_cache):
    spec = classify_spec("tiny-random-gpt2:3")
    assert spec.kind == "tiny-arch" and not Path(spec.source).exists()
    first = resolve_spec("tiny-random-gpt2:3")
    marker = Path(first.source) / "brd_tiny_model.json"
    assert json.loads(marker.read_text())["spec"] == "tiny-random-gpt2:3"
    stamp = marker.stat().st_mtime_ns
    assert resolve_spec("tiny-random-gpt2:3").source == first.source and marker.stat().st_mtime_ns == stamp


def test_tokenizer_only_paths_take_the_tiny_archs(rehearsal):
    """assemble and kd read a tokenizer without the weights; their 'tiny-random' branch must not catch these."""
    from brdlib.assemble import student_tokenizer
    from brdlib.packing import load_tokenizer

    tok = student_tokenizer(rehearsal)
    assert type(tok).__name__ == "XGLMTokenizer" and tok("a")["input_ids"][0] == tok.eos_token_id
    assert type(load_tokenizer(rehearsal.kd.released["skd"])).__name__ == "GPT2Tokenizer"


# Hub fixtures ------------------------------------------------------------------------------------------------------


def _load_make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", HUB_FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _content(path: Path) -> Any:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return table.schema.metadata.get(b"huggingface"), table.to_pylist()
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    return path.read_bytes()


def test_fixtures_are_what_make_fixtures_writes(tmp_path):
    _load_make_fixtures().main(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    own = ("make_fixtures.py", "FIXTURE")
    committed = sorted(p.relative_to(HUB_FIXTURES) for p in HUB_FIXTURES.rglob("*")
                       if p.is_file() and p.name not in own and "__pycache__" not in p.parts)
    assert written == committed
    stale = [str(p) for p in written if _content(tmp_path / p) != _content(HUB_FIXTURES / p)]
    assert not stale, f"rerun python tests/fixtures/hub/make_fixtures.py: {stale}"


@pytest.mark.parametrize(("repo", "config", "label_names"), [
    ("aps/super_glue", "rte", ["entailment", "not_entailment"]),
    ("aps/super_glue", "cb", ["entailment", "contradiction", "neutral"]),
    ("aps/super_glue", "boolq", ["False", "True"]),
    ("nyu-mll/glue", "sst2", ["negative", "positive"]),
    ("facebook/xnli", "en", ["entailment", "neutral", "contradiction"]),
    ("google-research-datasets/paws-x", "en", ["0", "1"]),
])
def test_fixture_repos_load_with_the_hub_schema(repo, config, label_names):
    from datasets import load_dataset

    for split in ("train", "validation", "test"):
        ds = load_dataset(str(HUB_FIXTURES / repo), config, split=split)
        assert ds.features["label"].names == label_names
        assert len(ds) >= 12
        assert all(ds.features[c].dtype == "int32" for c in ("idx", "id") if c in ds.features)


EXPECTED = {  # task: (test source, labelled test rows, labels seen)
    "xnli": ("hub-fixture:facebook/xnli/en:test", 15, {"entailment", "neutral", "contradiction"}),
    "rte": ("hub-fixture:aps/super_glue/rte:validation", 15, {"entailment", "not_entailment"}),
    "cb": ("hub-fixture:aps/super_glue/cb:validation", 15, {"entailment", "contradiction", "neutral"}),
    "boolq": ("hub-fixture:aps/super_glue/boolq:validation", 15, {"true", "false"}),
    "sst2": ("hub-fixture:nyu-mll/glue/sst2:validation", 15, {"positive", "negative"}),
    "pawsx": ("hub-fixture:google-research-datasets/paws-x/en:test", 15, {"paraphrase", "not_paraphrase"}),
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_hub_fixtures_load_through_the_hub_code(rehearsal, task):
    from brdlib.tasks import load_examples, split_info

    source, n_test, labels = EXPECTED[task]
    info = split_info(rehearsal, task)
    assert info.sources["test"] == source and info.sizes["test"] == n_test
    assert info.sources["train"].endswith(":train")
    examples = load_examples(rehearsal, task, "test")
    assert len(examples) == rehearsal.data.max_examples_per_task
    full = {e.label for e in load_examples(rehearsal.model_copy(deep=True), task, "train")}
    assert {e.label for e in examples} <= labels and full == labels
    if task == "pawsx":  # the hub's -1 (missing label) row is skipped and counted
        assert info.skipped == {"hub-fixture:google-research-datasets/paws-x/en:train: label -1 (no label)": 1}


def test_bigbench_fixture_is_the_sdist_layout(rehearsal):
    from brdlib.bigbench import REDUCED_SET, bigbench_tasks_dir, load_task_parts
    from brdlib.protocols import protocol_tasks
    from brdlib.tasks import load_examples, split_info, task_names

    assert bigbench_tasks_dir(rehearsal) == HUB_FIXTURES / "bigbench" / "benchmark_tasks"
    bb = [t for t in task_names(rehearsal) if t.startswith("bigbench:")]
    assert set(bb) == {f"bigbench:{t}" for t in (*REDUCED_SET, "authorship_verification")}
    assert [t for t in protocol_tasks(rehearsal) if t.startswith("bigbench:")] == [f"bigbench:{t}" for t in REDUCED_SET]
    parts = load_task_parts(bigbench_tasks_dir(rehearsal), "authorship_verification")
    assert [p.subtask for p in parts] == ["non_swapped", "swapped"]
    long = load_examples(rehearsal, "bigbench:authorship_verification", "test")
    assert min(len(e.prompt) for e in long) > 2000  # longer than the tiny models' positions, as in the paper
    assert split_info(rehearsal, "bigbench:winowhy").sources["test"].startswith("hub-fixture:bigbench/")


def test_every_fixture_answer_fits_the_smallest_position_table(rehearsal):
    """Contexts may be cut from the left (long BIG-bench prompts are, as on the paper's models); a candidate that
    outgrows the tiny GPT-2's 64 positions could not be scored at all, which the real tasks never ask of GPT-2."""
    from brdlib.models import tiny_arch_tokenizer
    from brdlib.tasks import task_data, task_names

    gpt2, xglm = tiny_arch_tokenizer("gpt2"), tiny_arch_tokenizer("xglm")
    longest = {t: max(len(gpt2(c)["input_ids"]) for e in task_data(rehearsal, t).splits["test"]
                      for c in e.continuations) for t in task_names(rehearsal)}
    assert max(longest.values()) < 64, longest
    prompts = [e.prompt for e in task_data(rehearsal, "bigbench:authorship_verification").splits["test"]]
    assert min(len(xglm(p)["input_ids"]) for p in prompts) > 256  # beyond the tiny XGLM's positions, as in the paper


def test_cc100_fixture_streams_through_the_cc100_reader(tmp_path):
    from brdlib.corpus import corpus_label, load_corpus_stats, load_passages

    cfg = load_config("rehearsal", [f"output_root={tmp_path}"])
    text = lzma.decompress((HUB_FIXTURES / "cc100" / "en.txt.xz").read_bytes()).decode()
    assert "\n\n" in text and text.endswith("\n")  # documents separated by blank lines
    passages = load_passages(cfg, progress=False)
    stats = load_corpus_stats(cfg)
    assert sum(len(p.sentences) for p in passages) == cfg.data.n_sentences
    assert all(p.passage_id.startswith("cc100-") and len(p.sentences) <= 5 for p in passages)
    assert stats.dropped.get("duplicate") and stats.dropped.get("fewer than 4 words")
    assert corpus_label(cfg).endswith("test-fixture rows, not the real corpus")


def test_rehearsal_is_listed_wherever_profiles_are(rehearsal):
    from brdlib.config import available_profiles

    assert "rehearsal" in available_profiles()
    for nb in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        text = nb.read_text()
        if "# profile: " in text:
            assert "rehearsal" in text.split("# profile: ", 1)[1].split("\\n", 1)[0], nb.name
    assert yaml.safe_load((CONFIG_DIR / "rehearsal.yaml").read_text())["extends"] == "paper"
