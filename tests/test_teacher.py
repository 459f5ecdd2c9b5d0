"""Teacher generation: backend parity, resumable and shardable runs, manifest, profile entry points."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest

from brdlib import backends as backends_mod
from brdlib import teacher as teacher_mod
from brdlib.backends import (
    DecodingParams,
    LlamaCppBackend,
    TransformersBackend,
    cut_at_stop,
    llamacpp_available,
    llamacpp_request,
    make_backend,
    naive_generate,
    resolve_backend_name,
    vllm_available,
    vllm_engine_kwargs,
    vllm_sampling_kwargs,
)
from brdlib.config import load_config
from brdlib.prompts import NER_TEMPLATE, QRA_TEMPLATE, TEMPLATES
from brdlib.records import BEHAVIOURS, BehaviourRecord, Passage, TeacherItem, parse_shard
from brdlib.teacher import (
    drop_table,
    generate_behaviours,
    items_from_passages,
    items_from_texts,
    load_behaviours,
    read_manifests,
    read_rows,
    record_key,
    run_teacher,
    sample_table,
    select_shard,
    shard_file,
    teacher_output_dir,
)

SENTENCES = [
    "Paris is the capital of France.",
    "The river Seine flows through the city and into the English Channel.",
    "A teacher reads each sentence and names the entities in it.",
    "Numbers like 3.5, 2025 and 40,000 appear too.",
    "Hi there.",
    "Is this review positive or negative?",
    "The quick brown fox jumps over the lazy dog.",
    "The movie was wonderful, and the actors were great.",
    "Tony Balay from Lonestar Smokehouse will teach the class.",
    "The cost to be in the class is $35 per person.",
    "Question: what does the student learn?",
]


def make_passages(n: int = 7, per: int = 3) -> list[Passage]:
    """n passages of per sentences from SENTENCES; passage 6 repeats passage 0's first sentence."""
    out = []
    for p in range(n):
        sents = tuple(SENTENCES[(p * per + i) % len(SENTENCES)] for i in range(per))
        if p == 6:
            sents = (SENTENCES[0],) + sents[1:]
        out.append(Passage(f"doc{p}-p0", f"doc{p}", sents, "fixture"))
    return out


def sharp_tiny_model(seed: int = 3):
    """A tiny random Llama with large weights, so its greedy output depends on the input (a random model
    with the default small init says the same thing to every prompt, which would make parity vacuous)."""
    import torch

    from brdlib.models import LoadedModel, build_tiny_random

    model, tok = build_tiny_random(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5, generator=gen)
    return LoadedModel(f"tiny-sharp:{seed}", "tiny-random", "test", model.eval(), tok, 0.0)


@pytest.fixture(scope="module")
def loaded():
    return sharp_tiny_model()


def params_for(behaviour: str, max_new_tokens: int = 12) -> DecodingParams:
    return DecodingParams(max_new_tokens=max_new_tokens, stop=TEMPLATES[behaviour].stop)


# Backends ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_cache", [False, True])
@pytest.mark.parametrize("batch_size", [3, 16])
def test_batched_greedy_equals_plain_generate_per_prompt(loaded, prefix_cache, batch_size):
    backend = TransformersBackend(loaded, batch_size=batch_size, prefix_cache=prefix_cache)
    for template in TEMPLATES.values():
        prompts = [template.render(s) for s in SENTENCES]
        for stop in (template.stop, ("e",)):  # the template's stop, and one that fires within a few tokens
            params = DecodingParams(max_new_tokens=20, stop=stop)
            reference = naive_generate(loaded, prompts, params)
            batched = backend.generate(prompts, params, shared_prefix=template.prefix)
            assert [g.text for g in batched] == [g.text for g in reference]
            assert len({g.text for g in reference}) > len(prompts) // 2, "outputs must depend on the input"
    if prefix_cache:
        assert len(backend._prefix_ids) >= 8  # the few-shot prefix was cached, not recomputed per batch


def test_same_prompt_same_text_within_the_backend(loaded):
    backend = TransformersBackend(loaded, batch_size=4)
    prompts = [NER_TEMPLATE.render(s) for s in SENTENCES]
    first = backend.generate(prompts, params_for("ner"), shared_prefix=NER_TEMPLATE.prefix)
    again = backend.generate(prompts[::-1], params_for("ner"), shared_prefix=NER_TEMPLATE.prefix)[::-1]
    assert [g.text for g in first] == [g.text for g in again]
    assert all(g.n_tokens <= 12 and g.finish_reason in {"stop", "length"} for g in first)


def test_stop_strings_end_the_text():
    assert cut_at_stop("abc\n\nEnter a sentence:\nx", ("Enter a sentence:", "\n\n")) == ("abc", True)
    assert cut_at_stop("abc", ("\n\n",)) == ("abc", False)


def test_decoding_params_reject_bad_values():
    with pytest.raises(ValueError, match="max_new_tokens"):
        DecodingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        DecodingParams(max_new_tokens=4, greedy=False, temperature=0)
    with pytest.raises(ValueError, match="stop strings"):
        DecodingParams(max_new_tokens=4, stop=("",))


def test_vllm_arguments_are_built_for_its_api():
    params = DecodingParams(max_new_tokens=64, stop=NER_TEMPLATE.stop, seed=3)
    assert vllm_sampling_kwargs(params) == {"max_tokens": 64, "stop": ["Enter a sentence:", "\n\n"], "seed": 3,
                                            "temperature": 0.0, "top_p": 1.0}
    sampled = vllm_sampling_kwargs(DecodingParams(max_new_tokens=8, greedy=False, temperature=0.7, top_p=0.9))
    assert sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9
    engine = vllm_engine_kwargs("/models/vicuna", seed=1, dtype="bfloat16", max_model_len=4096)
    assert engine == {"model": "/models/vicuna", "enable_prefix_caching": True, "seed": 1, "dtype": "bfloat16",
                      "max_model_len": 4096}


def test_vllm_memory_share_is_a_checked_profile_key():
    """Defect 4: vLLM's share of the GPU is set from the profile (it was left to vLLM's default)."""
    engine = vllm_engine_kwargs("/m", gpu_memory_utilization=0.85, enforce_eager=True)
    assert engine["gpu_memory_utilization"] == 0.85 and engine["enforce_eager"] is True
    with pytest.raises(ValueError, match=r"gpu_memory_utilization must lie in \(0, 1\], got 1.5"):
        vllm_engine_kwargs("/m", gpu_memory_utilization=1.5)
    assert load_config("paper").teacher.vllm_gpu_memory_utilization == 0.85
    assert load_config("paper").teacher.vllm_child_process is True
    with pytest.raises(Exception, match="vllm_gpu_memory_utilization"):
        load_config("tiny", ["teacher.vllm_gpu_memory_utilization=1.5"])


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_vllm_backend_without_vllm_says_how_to_get_it():
    with pytest.raises(ImportError, match=r"brdlib\[gpu\]"):
        backends_mod.VllmBackend("/models/x", "x")


def test_llamacpp_request_is_greedy_with_prompt_caching():
    req = llamacpp_request("prompt", params_for("qra", 32))
    assert req == {"prompt": "prompt", "max_tokens": 32, "stop": ["The sentence:", "\n\n"], "cache_prompt": True,
                   "seed": 0, "temperature": 0.0, "top_k": 1}


def test_backend_choice(monkeypatch):
    cfg = load_config("tiny")
    assert resolve_backend_name(cfg) == "transformers"
    cfg = load_config("smoke", ["teacher.backend=auto", "device=cpu"])
    monkeypatch.setattr(backends_mod, "llamacpp_available", lambda: True)
    assert resolve_backend_name(cfg) == "llamacpp"
    monkeypatch.setattr(backends_mod, "llamacpp_available", lambda: False)
    assert resolve_backend_name(cfg) == "transformers"
    monkeypatch.setattr(backends_mod, "vllm_available", lambda: True)
    assert resolve_backend_name(load_config("smoke", ["device=cuda"])) == "vllm"
    assert resolve_backend_name(load_config("smoke", ["device=cuda", "teacher.backend=transformers"])) == "transformers"
    with pytest.raises(ValueError, match="GGUF"):
        make_backend(load_config("tiny", ["teacher.backend=llamacpp"]))
    with pytest.raises(ValueError, match="tiny-random"):
        make_backend(load_config("tiny", ["teacher.backend=vllm"]))


# Keys, shards ----------------------------------------------------------------------------------------


def test_record_key_covers_model_template_decoding_and_sentence():
    p = params_for("ner")
    base = record_key("m", NER_TEMPLATE, p, "A sentence.")
    assert base == record_key("m", NER_TEMPLATE, p, "A sentence.")
    assert len({base, record_key("m2", NER_TEMPLATE, p, "A sentence."),
                record_key("m", QRA_TEMPLATE, p, "A sentence."),
                record_key("m", NER_TEMPLATE, params_for("ner", 13), "A sentence."),
                record_key("m", NER_TEMPLATE, p, "Another sentence.")}) == 5


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3 / 8 ") == (3, 8)
    for bad in ["2/2", "a/b", "1/0", "-1/2", "1"]:
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    with pytest.raises(Exception, match="shard"):
        load_config("tiny", ["teacher.shard=5/4"])


def test_shards_partition_the_passages():
    items = items_from_passages(make_passages(40))
    parts = [select_shard(items, f"{i}/3") for i in range(3)]
    assert sorted(map(repr, sum(parts, []))) == sorted(map(repr, items))
    for part in parts:  # a passage's sentences stay together
        pids = {it.passage_id for it in part}
        assert all(it.passage_id in pids for it in items if it.passage_id in pids)
    assert all(len(p) > 0 for p in parts)


def test_items_from_texts_for_downstream_inputs():
    items = items_from_texts(["premise one. hypothesis", " ", "x"], ids=["a", "b", "c"])
    assert items == [TeacherItem("a", 0, "premise one. hypothesis"), TeacherItem("c", 0, "x")]
    with pytest.raises(ValueError, match="2 ids for 3 texts"):
        items_from_texts(["a", "b", "c"], ids=["1", "2"])


# Runs: resume, dedupe, shards, manifest ----------------------------------------------------------------


def run(loaded, out, items, shard="0/1", on_batch=None, batch_size=4):
    backend = TransformersBackend(loaded, batch_size=batch_size)
    params = {b: params_for(b) for b in BEHAVIOURS}
    return generate_behaviours(items, backend, out, params, shard=shard, progress=False, on_batch=on_batch)


def records_in(out: Path) -> list[tuple]:
    return sorted((r["behaviour"], r["passage_id"], r["sentence_index"], r["key"], r["sentence"], r["response"],
                   r["drop_reason"], r["raw"]) for r in read_rows(out))


def lines_in(out: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in out.glob("*.jsonl"))


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(loaded, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    stats = run(loaded, out, items_from_passages(make_passages()))
    return out, stats


def test_a_run_writes_one_record_per_sentence_and_behaviour(uninterrupted):
    out, stats = uninterrupted
    items = items_from_passages(make_passages())
    recs = records_in(out)
    assert len(recs) == 2 * len(items) == lines_in(out)
    unique = len({it.sentence for it in items})
    for b in BEHAVIOURS:
        s = stats.behaviours[b]
        assert s.records == len(items) and s.generated == unique < len(items)  # the repeated sentence once
        assert s.kept + sum(s.drops.values()) == s.records and s.tokens > 0
    by_pos = {(r[0], r[1], r[2]): r for r in recs}
    assert by_pos[("ner", "doc0-p0", 0)][5:] == by_pos[("ner", "doc6-p0", 0)][5:]


def kill_and_resume(run_fn, loaded, reference, tmp_path, items, k):
    """Kill ``run_fn`` once ``k`` records of one behaviour are written, rerun it, and check that the records equal
    the uninterrupted run's with no duplicate line and every partial record reused; returns the partial records
    and the rerun's result."""

    def kill_after_k(behaviour: str, written: int) -> None:
        if behaviour == BEHAVIOURS[k % 2] and written >= k:
            raise Killed

    with pytest.raises(Killed):
        run_fn(loaded, tmp_path, items, on_batch=kill_after_k)
    partial = records_in(tmp_path)
    assert 0 < len(partial) < len(records_in(reference))
    result = run_fn(loaded, tmp_path, items)
    stats = result[0] if isinstance(result, tuple) else result
    assert records_in(tmp_path) == records_in(reference)
    assert lines_in(tmp_path) == len(records_in(reference))  # no duplicate line
    assert sum(s.reused for s in stats.behaviours.values()) == len(partial)
    return partial, result


@pytest.mark.parametrize("k", [4, 9, 15])
def test_a_run_killed_after_k_records_resumes_to_exactly_the_uninterrupted_records(loaded, uninterrupted, tmp_path, k):
    reference, _ = uninterrupted
    items = items_from_passages(make_passages())
    kill_and_resume(run, loaded, reference, tmp_path, items, k)
    again = run(loaded, tmp_path, items)  # a finished run generates nothing
    assert again.sentences_generated == 0 and records_in(tmp_path) == records_in(reference)


def test_a_torn_last_line_is_regenerated(loaded, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    items = items_from_passages(make_passages())
    with pytest.raises(Killed):
        run(loaded, tmp_path, items, on_batch=lambda b, n: (_ for _ in ()).throw(Killed) if n >= 5 else None)
    path = shard_file(tmp_path, "ner", (0, 1))
    complete = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(complete[:-1]) + complete[-1][: len(complete[-1]) // 2])  # the kill tore a write
    run(loaded, tmp_path, items)
    assert records_in(tmp_path) == records_in(reference)
    assert all(json.loads(line) for line in path.read_bytes().splitlines())  # the torn bytes are gone


def _killed_child(out: str, k: int) -> None:
    """Spawned: generate with the same model, SIGKILL itself after k records are on disk."""
    items = items_from_passages(make_passages())

    def die(behaviour: str, written: int) -> None:
        if written >= k:
            os.kill(os.getpid(), signal.SIGKILL)

    run(sharp_tiny_model(), Path(out), items, on_batch=die)


def test_a_run_killed_by_sigkill_resumes_without_loss_or_duplicate(loaded, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    child = multiprocessing.get_context("spawn").Process(target=_killed_child, args=(str(tmp_path), 6))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    assert 0 < len(records_in(tmp_path)) < len(records_in(reference))
    run(loaded, tmp_path, items_from_passages(make_passages()))
    assert records_in(tmp_path) == records_in(reference)
    assert lines_in(tmp_path) == len(records_in(reference))


class StreamingTransformers(TransformersBackend):
    """A transformers backend that streams as vLLM does (``streams``): one call per stream, completions handed back
    in an order other than the prompts' (last first), every call's prompt count recorded."""

    streams = True

    def __init__(self, loaded, batch_size: int = 4) -> None:
        super().__init__(loaded, batch_size=batch_size)
        self.calls: list[int] = []

    def generate_stream(self, prompts, params, shared_prefix=None):
        self.calls.append(len(prompts))
        gens = self.generate(prompts, params, shared_prefix)
        yield from reversed(list(enumerate(gens)))


def stream_run(loaded, out, items, on_batch=None):
    backend = StreamingTransformers(loaded, batch_size=4)
    params = {b: params_for(b) for b in BEHAVIOURS}
    stats = generate_behaviours(items, backend, out, params, progress=False, on_batch=on_batch)
    return stats, backend


def test_a_streaming_backend_gets_every_missing_prompt_in_one_call(loaded, uninterrupted, tmp_path):
    """vLLM is handed the whole stream, not blocks of batch_size that each wait for their slowest completion."""
    reference, _ = uninterrupted
    items = items_from_passages(make_passages())
    stats, backend = stream_run(loaded, tmp_path, items)
    distinct = len({it.sentence for it in items})
    assert backend.calls == [distinct, distinct] and distinct > backend.batch_size  # one call per behaviour
    assert records_in(tmp_path) == records_in(reference) and lines_in(tmp_path) == len(records_in(reference))
    assert stats.sentences_generated == 2 * distinct


def test_a_huge_stream_goes_in_blocks_of_stream_block(loaded, uninterrupted, tmp_path, monkeypatch):
    """The paper's millions of prompts are not rendered and sent at once: blocks of teacher.STREAM_BLOCK."""
    from brdlib import teacher as teacher_mod

    monkeypatch.setattr(teacher_mod, "STREAM_BLOCK", 4)
    reference, _ = uninterrupted
    _, backend = stream_run(loaded, tmp_path, items_from_passages(make_passages()))
    assert backend.calls == [4, 4, 3, 4, 4, 3]
    assert records_in(tmp_path) == records_in(reference)


@pytest.mark.parametrize("k", [4, 9])
def test_a_killed_streaming_run_resumes_without_loss_or_duplicate(loaded, uninterrupted, tmp_path, k):
    """Records are written batch_size at a time as they finish; a resumed stream asks only for what is missing."""
    reference, _ = uninterrupted
    items = items_from_passages(make_passages())
    partial, (stats, backend) = kill_and_resume(stream_run, loaded, reference, tmp_path, items, k)
    done_keys = {(r[0], r[3]) for r in partial}
    missing = {(b, record_key("tiny-sharp:3", TEMPLATES[b], params_for(b), it.sentence))
               for b in BEHAVIOURS for it in items} - done_keys
    assert stats.sentences_generated == sum(backend.calls) == len(missing)  # nothing finished is asked for again


def test_shards_run_apart_add_up_to_the_whole_run(loaded, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    items = items_from_passages(make_passages())
    for i in range(3):
        run(loaded, tmp_path, items, shard=f"{i}/3")
    assert records_in(tmp_path) == records_in(reference)
    assert len(list(tmp_path.glob("ner-*-of-00003.jsonl"))) == 3
    manifests = read_manifests(tmp_path)
    assert sorted(m["shard"] for m in manifests) == ["0/3", "1/3", "2/3"]
    assert sum(m["counts"]["ner"]["records"] for m in manifests) == len(items)


def test_manifest_records_model_backend_parameters_counts_and_time(uninterrupted):
    out, stats = uninterrupted
    (manifest,) = read_manifests(out)
    assert manifest["model"] == "tiny-sharp:3" and manifest["backend"]["backend"] == "transformers"
    assert manifest["decoding"]["ner"]["max_new_tokens"] == 12 and manifest["decoding"]["ner"]["greedy"] is True
    assert manifest["templates"]["qra"] == QRA_TEMPLATE.fingerprint
    run_entry = manifest["runs"][-1]
    assert run_entry["wall_seconds"] > 0 and run_entry["tokens"] == stats.tokens > 0
    assert run_entry["sentences_generated"] == stats.sentences_generated
    assert manifest["counts"]["ner"]["records"] == stats.behaviours["ner"].records
    assert "tokens/s" in stats.throughput_line() and "sentences/s" in stats.throughput_line()


def test_two_writers_on_one_shard_are_refused(tmp_path):
    from brdlib.teacher import ShardWriter

    first = ShardWriter(tmp_path / "ner-00000-of-00001.jsonl")
    try:
        with pytest.raises(RuntimeError, match="one writer per shard"):
            ShardWriter(tmp_path / "ner-00000-of-00001.jsonl")
    finally:
        first.close()


# Profile entry points and tables -------------------------------------------------------------------------


def test_run_teacher_on_a_profile_then_load_behaviours(tmp_path, monkeypatch):
    cfg = load_config("tiny", [f"output_root={tmp_path}"])
    passages = make_passages(4)
    out = teacher_output_dir(cfg)
    assert out.parent == cfg.data_dir / "teacher" and out.name.startswith("teacher-tiny-random_1-")
    assert teacher_output_dir(load_config("tiny", [f"output_root={tmp_path}", "teacher.max_new_tokens=17"])) != out
    with pytest.raises(FileNotFoundError, match="run notebooks/01"):
        load_behaviours(cfg)
    stats = run_teacher(cfg, passages, progress=False)
    assert stats.sentences_generated > 0
    records = load_behaviours(cfg)
    assert all(isinstance(r, BehaviourRecord) for r in records)
    assert {r.behaviour for r in records} == set(BEHAVIOURS)
    assert len(records) == 2 * sum(len(p.sentences) for p in passages)
    assert all((r.response == "") == (r.drop_reason is not None) for r in records)
    assert len(load_behaviours(cfg, passages=passages[:2])) == 2 * sum(len(p.sentences) for p in passages[:2])

    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not load the model")

    monkeypatch.setattr(teacher_mod, "make_backend", no_model)
    again = run_teacher(cfg, passages, progress=False)
    assert again.sentences_generated == 0 and again.behaviours["ner"].reused == len(records) // 2

    table = drop_table(records)
    assert list(table["behaviour"]) == ["ner", "qra"]
    assert (table["kept"] + table.filter(like="dropped:").sum(axis=1) == table["records"]).all()
    sample = sample_table(records, n=2, kept_only=False)
    assert list(sample["source"]).count("paper (Vicuna-13B)") == 2 and len(sample) == 6


# Real teachers (slow) ---------------------------------------------------------------------------------------


def _embedded_ready(name: str) -> bool:
    from brdlib.embedded import get_embedded, is_installed

    return is_installed(get_embedded(name))


@pytest.fixture
def smollm2_llamacpp():
    """The embedded SmolLM2 GGUF on the llama.cpp backend, one slot; skips where either is missing."""
    if not llamacpp_available():
        pytest.skip("xllamacpp not installed (pip install 'brdlib[cpu]')")
    if not _embedded_ready("smollm2-135m-instruct"):
        pytest.skip("embedded smollm2 not installed")
    from brdlib.embedded import gguf_path

    backend = LlamaCppBackend(gguf_path("smollm2-135m-instruct"), "smollm2-135m-instruct", batch_size=1, n_threads=2)
    yield backend
    backend.close()


@pytest.mark.slow
@pytest.mark.embedded
def test_llamacpp_backend_reads_the_embedded_gguf(smollm2_llamacpp):
    """The llama.cpp backend loads the embedded GGUF and answers every NER prompt with a cut, non-empty text."""
    generated = smollm2_llamacpp.generate([NER_TEMPLATE.render(s) for s in SENTENCES[:3]], params_for("ner", 24))
    assert len(generated) == 3 and all(g.n_tokens > 0 and g.text.strip() for g in generated)
    assert not any("Enter a sentence:" in g.text or "\n\n" in g.text for g in generated)


@pytest.mark.slow
@pytest.mark.embedded
@pytest.mark.parametrize(("batch", "slots"), [(8, 8), (12, 4)])
def test_llamacpp_backend_is_repeatable_across_fresh_servers(batch, slots):
    """Two fresh llama.cpp servers with several slots give the same texts for the same batches (the teacher's
    records, hence every smoke table, repeat), also when a batch holds more prompts than slots (a freed slot takes
    the next prompt). Submitting a batch from one thread per prompt made the decoding batches depend on arrival
    order: 43 of 48 NER responses equal between two runs of the 0.5B teacher."""
    if not (llamacpp_available() and _embedded_ready("smollm2-135m-instruct")):
        pytest.skip("xllamacpp or the embedded smollm2 not installed")
    from brdlib.embedded import gguf_path

    words = ["river", "teacher", "capital", "museum", "engine", "garden", "student", "market"]
    sentences = [f"The {a} near the {b} was opened in {1900 + 7 * i}." for i, (a, b) in
                 enumerate((a, b) for a in words for b in words[:3])]
    prompts, params = [NER_TEMPLATE.render(s) for s in sentences], params_for("ner", 24)
    runs = []
    for _ in range(2):
        backend = LlamaCppBackend(gguf_path("smollm2-135m-instruct"), "smollm2-135m-instruct", batch_size=batch,
                                  n_threads=2, n_slots=slots)
        assert backend.describe()["n_slots"] == slots
        runs.append([g.text for i in range(0, len(prompts), batch)
                     for g in backend.generate(prompts[i:i + batch], params)])
        backend.close()
    assert len(runs[0]) == len(prompts) and all(runs[0])
    # each response is its own prompt's: NER names the sentence's words (the order of choices was kept)
    assert all(s.split()[1] in r or s.split()[4] in r for s, r in zip(sentences, runs[0], strict=True)), runs[0]
    assert runs[0] == runs[1], sum(a != b for a, b in zip(*runs, strict=True))


def test_a_vllm_python_that_is_no_interpreter_is_named(tmp_path):
    """teacher.vllm_python (vLLM in an environment of its own) must be an executable; the error names the key."""
    from brdlib.backends import VllmBackend, check_vllm_python

    with pytest.raises(ValueError, match=r"teacher.vllm_python=.*not an executable Python interpreter"):
        VllmBackend(str(tmp_path), "m", device="cpu", python=tmp_path / "no-such-python")
    assert check_vllm_python(sys.executable) == str(Path(sys.executable).absolute())  # a venv's link is kept
    cfg = load_config("rehearsal", [f"teacher.vllm_python={sys.executable}"])
    assert str(cfg.teacher.vllm_python) == sys.executable


def test_vllm_missing_here_names_the_ways_out(tmp_path):
    """Without vLLM in this environment the error says how to get it: install it, point teacher.vllm_python at an
    environment that has it, or use transformers."""
    from brdlib.backends import VllmBackend, vllm_available

    if vllm_available():
        pytest.skip("vllm is installed here")
    with pytest.raises(ImportError, match=r"teacher\.vllm_python=.*ensure_vllm_env.*teacher\.backend=transformers"):
        VllmBackend(str(tmp_path), "m", device="cpu")
