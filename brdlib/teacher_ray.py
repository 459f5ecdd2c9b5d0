"""The teacher on a Ray cluster (``teacher.engine: ray``): one command for every GPU and machine.

    teacher:
      engine: ray
      ray: {workers: 4, tensor_parallel_size: 1, shard_batches: 8}   # address: auto to join a running cluster

Ray Data carries the work; vLLM models generate through ``ray.data.llm`` (``vLLMEngineProcessorConfig``,
``build_processor``: replicas, tensor parallelism, continuous batching), GGUF (llama.cpp) and transformers
models through a pool of Ray actors, each holding one :mod:`brdlib.backends` backend. Everything else is the
local engine's (:mod:`brdlib.teacher`): the Table 1/2 templates, the cleaning, the records, their keys, the
output directory and the manifest, so every later stage reads a Ray run as it reads a local one.

Work and resume. Per behaviour, the records missing from the output directory are planned as the local engine
plans them (:func:`brdlib.teacher.plan_behaviour`: distinct sentences, shortest first, cut into
``teacher.batch_size`` batches, a batch with anything missing generated whole); ``teacher.ray.shard_batches``
consecutive batches make a shard. For a CPU backend each batch is one Ray Data row, so each batch's texts are
those a local run produces; for vLLM each prompt is a row and ray.data.llm batches them. The driver gathers the
results per shard and writes the shard's file, ``<behaviour>-ray<j>-of-<K>.jsonl``, to a temporary file,
fsynced and renamed into place once the whole shard is in. Killing the driver loses only unwritten shards (a
rerun plans again from what is on disk: nothing lost, nothing written twice); a killed worker is restarted by Ray
and its rows retried (Ray Data's actor pools: ``max_restarts=-1``, ``max_task_retries=-1``).

Cluster: ``teacher.ray.address: auto`` (or ``ray://head:10001``) joins a running cluster; brdlib travels to the
workers as a ``py_modules`` runtime environment and each node must reach the model (hub id, or the embedded
model's PyPI package installed there). The driver writes the output, so no shared file system is needed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.backends import (
    DecodingParams,
    Generation,
    cut_at_stop,
    make_backend,
    resolve_backend_name,
    vllm_engine_kwargs,
    vllm_model_path,
    vllm_sampling_kwargs,
)
from brdlib.prompts import get_template
from brdlib.records import TeacherItem
from brdlib.store import write_text_atomic
from brdlib.teacher import (
    BehaviourPlan,
    BehaviourStats,
    RunStats,
    count_generations,
    cut_batches,
    decoding_params,
    iter_rows,
    make_row,
    plan_behaviour,
    register_engine,
    rows_for,
    teacher_output_dir,
    write_manifest,
)

if TYPE_CHECKING:
    from brdlib.config import Config

__all__ = [
    "RAY_MANIFEST", "BackendWorker", "ShardCallback", "ShardWork", "plan_shards", "ray_init_kwargs", "ray_shard_file",
    "run_teacher_ray", "vllm_processor", "write_shard",
]

RAY_MANIFEST = "manifest-ray-of-all.json"
"""The Ray engine's manifest (one per output directory, a run appended each time)."""

ShardCallback = Callable[[str, int, int], None]


@dataclass
class ShardWork:
    """One shard of one behaviour: its batches of keys, and those of its keys still to be generated."""

    behaviour: str
    index: int
    n_shards: int
    batches: list[list[str]]
    generate: list[list[str]] = field(default_factory=list)  # batches that hold a key with no answer on disk

    @property
    def n_generate(self) -> int:
        return sum(len(b) for b in self.generate)


def ray_shard_file(out_dir: Path, behaviour: str, index: int, n_shards: int) -> Path:
    """``<behaviour>-ray<j>-of-<K>.jsonl``: read by :func:`brdlib.teacher.iter_rows` like any shard file."""
    return Path(out_dir) / f"{behaviour}-ray{index:05d}-of-{n_shards:05d}.jsonl"


def plan_shards(plan: BehaviourPlan, behaviour: str, batch_size: int, shard_batches: int) -> list[ShardWork]:
    """The shards of one behaviour that hold a missing record: ``shard_batches`` consecutive batches of the local
    engine's order each; a batch is generated whole when one of its keys has no response on disk anywhere."""
    batches = cut_batches(plan.order, batch_size)
    groups = [batches[i:i + shard_batches] for i in range(0, len(batches), shard_batches)]
    work = []
    for j, group in enumerate(groups):
        if not any(plan.missing.intersection(b) for b in group):
            continue
        generate = [b for b in group if any(k in plan.missing and k not in plan.answer for k in b)]
        work.append(ShardWork(behaviour, j, len(groups), group, generate))
    return work


def write_shard(out: Path, work: ShardWork, plan: BehaviourPlan, gens: dict[str, Generation], backend_name: str
                ) -> int:
    """Write the shard's missing records (with those of its file already on disk) atomically; returns how many
    records it added."""
    template = get_template(work.behaviour)
    rows = []
    for batch in work.batches:
        for k in batch:
            if k in plan.missing:
                base = make_row(k, template, plan.by_key[k][0].sentence, gens[k], backend_name) if k in gens \
                    else plan.answer[k]
                rows += rows_for(plan, k, base)
    path = ray_shard_file(out, work.behaviour, work.index, work.n_shards)
    kept = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _file_rows(path))
    write_text_atomic(path, kept + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows)


def _file_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a shard file written earlier (whole, as the file is only ever renamed into place)."""
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            yield from (json.loads(line) for line in fh if line.strip())


# Workers ------------------------------------------------------------------------------------------


class BackendWorker:
    """A Ray actor holding one brdlib backend (llama.cpp or transformers); each call generates one batch."""

    def __init__(self, cfg: Config, role: str, params: dict[str, DecodingParams]) -> None:
        threads = cfg.teacher.ray.cpus_per_worker
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        teacher = cfg.teacher.model_copy(update={"llamacpp_threads": threads})
        self.backend = make_backend(cfg.model_copy(update={"teacher": teacher}), role)
        self.params = params
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        behaviour = row["behaviour"]
        template = get_template(behaviour)
        start = time.perf_counter()
        gens = self.backend.generate([template.render(s) for s in row["sentences"]], self.params[behaviour],
                                     shared_prefix=template.prefix)
        return {"behaviour": behaviour, "shard": row["shard"], "keys": list(row["keys"]),
                "texts": [g.text for g in gens], "n_tokens": [g.n_tokens for g in gens],
                "finish": [g.finish_reason for g in gens], "seconds": time.perf_counter() - start,
                "worker": self.worker}


def _actor_rows(works: Sequence[ShardWork], plans: dict[str, BehaviourPlan]) -> list[dict[str, Any]]:
    return [{"behaviour": w.behaviour, "shard": w.index, "keys": batch,
             "sentences": [plans[w.behaviour].by_key[k][0].sentence for k in batch]}
            for w in works for batch in w.generate]


def _actor_results(ds: Any) -> Iterator[tuple[str, int, dict[str, Generation], float]]:
    for row in ds.iter_rows():
        gens = {k: Generation(t, int(n), f) for k, t, n, f in
                zip(row["keys"], row["texts"], row["n_tokens"], row["finish"], strict=True)}
        yield row["behaviour"], int(row["shard"]), gens, float(row["seconds"])


def _actor_pipeline(cfg: Config, role: str, params: dict[str, DecodingParams], rows: list[dict[str, Any]]
                    ) -> Iterator[tuple[str, int, dict[str, Generation], float]]:
    """CPU backends: one row per batch, a pool of ``workers`` actors of ``cpus_per_worker`` CPUs."""
    import ray.data

    r = cfg.teacher.ray
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    # Ray Data's actor pools restart a killed actor and retry its rows (max_restarts, max_task_retries: -1)
    ds = ds.map(BackendWorker, fn_constructor_kwargs={"cfg": cfg, "role": role, "params": params},
                compute=ray.data.ActorPoolStrategy(size=r.workers), num_cpus=r.cpus_per_worker)
    return _actor_results(ds)


def _vllm_rows(works: Sequence[ShardWork], plans: dict[str, BehaviourPlan]) -> list[dict[str, Any]]:
    rows = []
    for w in works:
        template = get_template(w.behaviour)
        for batch in w.generate:
            for k in batch:
                rows.append({"behaviour": w.behaviour, "shard": w.index, "key": k,
                             "prompt": template.render(plans[w.behaviour].by_key[k][0].sentence)})
    return rows


def vllm_processor(cfg: Config, role: str, params: dict[str, DecodingParams]) -> Any:
    """``ray.data.llm``'s vLLM processor for the teacher: the rendered prompt in (no chat template; the
    Table 1/2 prompts are complete texts), the behaviour's sampling parameters, the text and token count out."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    t, r = cfg.teacher, cfg.teacher.ray
    path = vllm_model_path(cfg.models.roles()[role])
    engine = vllm_engine_kwargs(path, seed=cfg.seed, dtype=cfg.resolved_dtype(),
                                gpu_memory_utilization=r.gpu_memory_utilization or t.vllm_gpu_memory_utilization,
                                enforce_eager=t.vllm_enforce_eager if t.vllm_enforce_eager is not None
                                else cfg.resolved_device() == "cpu")  # as the local engine: eager on CPU
    engine.pop("model")
    engine["tensor_parallel_size"] = r.tensor_parallel_size
    extra: dict[str, Any] = {}
    if cfg.resolved_device() == "cpu":  # vLLM's CPU build: replicas take CPUs, not GPUs
        extra["placement_group_config"] = {"bundle_per_worker": {"CPU": r.cpus_per_worker}}
    config = vLLMEngineProcessorConfig(model_source=path, engine_kwargs=engine, concurrency=r.workers,
                                       batch_size=r.batch_size or t.batch_size, chat_template_stage=False,
                                       tokenize_stage=False, detokenize_stage=False, **extra)
    sampling = {b: vllm_sampling_kwargs(p) for b, p in params.items()}
    return build_processor(
        config,
        preprocess=lambda row: {**row, "sampling_params": sampling[row["behaviour"]]},
        postprocess=lambda row: {"behaviour": row["behaviour"], "shard": row["shard"], "key": row["key"],
                                 "text": row["generated_text"], "n_tokens": row["num_generated_tokens"]},
    )


def _vllm_pipeline(cfg: Config, role: str, params: dict[str, DecodingParams], rows: list[dict[str, Any]]
                   ) -> Iterator[tuple[str, int, dict[str, Generation], float]]:
    """vLLM: one row per prompt through ray.data.llm; each result is handed on alone (the driver groups them)."""
    import ray.data

    ds = vllm_processor(cfg, role, params)(ray.data.from_items(rows))
    last = time.perf_counter()
    for row in ds.iter_rows():
        dp = params[row["behaviour"]]
        text, _ = cut_at_stop(row["text"], dp.stop)
        n = int(row["n_tokens"])
        now = time.perf_counter()
        yield row["behaviour"], int(row["shard"]), \
            {row["key"]: Generation(text, n, "length" if n >= dp.max_new_tokens else "stop")}, now - last
        last = now


# The driver ---------------------------------------------------------------------------------------


def ray_init_kwargs(cfg: Config) -> dict[str, Any]:
    """``ray.init`` arguments: a local cluster sized to the workers, or the configured address with brdlib
    shipped to the workers."""
    import brdlib

    r = cfg.teacher.ray
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
    if r.address is None:
        kwargs["num_cpus"] = r.workers * r.cpus_per_worker
    else:
        kwargs["address"] = r.address
        kwargs["runtime_env"] = {"py_modules": [str(Path(brdlib.__file__).parent)]}
    return kwargs


def run_teacher_ray(cfg: Config, items: Sequence[TeacherItem], teacher_role: str = "teacher",
                    behaviours: Sequence[str] | None = None, progress: bool = True,
                    on_shard: ShardCallback | None = None) -> RunStats:
    """Generate every missing record of ``behaviours`` for ``items`` on Ray, a shard written at a time.

    ``on_shard(behaviour, shard, records_added)`` is called after each shard is written (tests kill runs there).
    """
    from tqdm import tqdm

    behaviours = list(behaviours or cfg.teacher.behaviours)
    params = {b: decoding_params(cfg, b) for b in behaviours}
    model = cfg.models.roles()[teacher_role]
    out = teacher_output_dir(cfg, teacher_role)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.jsonl.tmp*"):
        stale.unlink()
    started = time.perf_counter()
    plans = {b: plan_behaviour(items, model, out, get_template(b), params[b]) for b in behaviours}
    works = [w for b in behaviours
             for w in plan_shards(plans[b], b, cfg.teacher.batch_size, cfg.teacher.ray.shard_batches)]
    backend = resolve_backend_name(cfg, teacher_role)
    stats = RunStats(str(out), model, _describe(cfg, backend), f"ray:{works[0].n_shards if works else 0}",
                     {b: BehaviourStats(b, records=len(p.wanted), reused=len(p.done)) for b, p in plans.items()})
    bar = tqdm(total=sum(len(p.wanted) for p in plans.values()), initial=sum(len(p.done) for p in plans.values()),
               desc="teacher (ray)", unit="rec", disable=not progress, dynamic_ncols=True)

    def finish(work: ShardWork, gens: dict[str, Generation]) -> None:
        added = write_shard(out, work, plans[work.behaviour], gens, backend)
        stats.behaviours[work.behaviour].copied += sum(k not in gens for b in work.batches for k in b
                                                       if k in plans[work.behaviour].answer)
        bar.update(added)
        if on_shard is not None:
            on_shard(work.behaviour, work.index, added)

    try:
        for w in [w for w in works if not w.generate]:  # only copies of responses on disk: no model needed
            finish(w, {})
        _generate(cfg, teacher_role, params, plans, [w for w in works if w.generate], backend, stats, finish)
    finally:
        bar.close()
    stats.seconds = time.perf_counter() - started
    _final_counts(stats, plans, out)
    write_manifest(out, stats, params, path=out / RAY_MANIFEST)
    if progress:
        print(stats.throughput_line(), flush=True)
    return stats


def _generate(cfg: Config, role: str, params: dict[str, DecodingParams], plans: dict[str, BehaviourPlan],
              works: list[ShardWork], backend: str, stats: RunStats,
              finish: Callable[[ShardWork, dict[str, Generation]], None]) -> None:
    """Run the pipeline over the shards' batches and finish each shard once all its generations are in."""
    if not works:
        return
    import ray

    own = not ray.is_initialized()
    ray.init(**ray_init_kwargs(cfg))
    try:
        _collect(cfg, role, params, plans, works, backend, stats, finish)
    finally:
        if own:
            ray.shutdown()


def _collect(cfg: Config, role: str, params: dict[str, DecodingParams], plans: dict[str, BehaviourPlan],
             works: list[ShardWork], backend: str, stats: RunStats,
             finish: Callable[[ShardWork, dict[str, Generation]], None]) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver's tqdm bar counts records; Ray's would repeat it per stage
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # Ray Data's progress lines every 10 s
    by_shard = {(w.behaviour, w.index): w for w in works}
    got: dict[tuple[str, int], dict[str, Generation]] = {key: {} for key in by_shard}
    if backend == "vllm":
        results = _vllm_pipeline(cfg, role, params, _vllm_rows(works, plans))
    else:
        results = _actor_pipeline(cfg, role, params, _actor_rows(works, plans))
    for behaviour, shard, gens, seconds in results:
        count_generations(stats.behaviours[behaviour], list(gens.values()), seconds)
        got[(behaviour, shard)].update(gens)
        work = by_shard[(behaviour, shard)]
        if len(got[(behaviour, shard)]) == work.n_generate:
            finish(work, got.pop((behaviour, shard)))


def _final_counts(stats: RunStats, plans: dict[str, BehaviourPlan], out: Path) -> None:
    from collections import Counter

    for b, plan in plans.items():
        stats.behaviours[b].drops = dict(Counter(r["drop_reason"] for r in iter_rows(out, [b])
                                                 if r["drop_reason"] and (r["passage_id"], r["sentence_index"],
                                                                          r["key"]) in plan.wanted))


def _describe(cfg: Config, backend: str) -> dict[str, Any]:
    r = cfg.teacher.ray
    return {"backend": backend, "engine": "ray", "address": r.address or "local", "workers": r.workers,
            "cpus_per_worker": r.cpus_per_worker, "tensor_parallel_size": r.tensor_parallel_size,
            "shard_batches": r.shard_batches, "batch_size": cfg.teacher.batch_size,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


register_engine("ray", lambda cfg, items, role, behaviours, progress:
                run_teacher_ray(cfg, items, role, behaviours, progress))
