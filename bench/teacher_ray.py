"""The teacher on Ray against the single-process engine, on the same requests in one run.

    pip install -e ".[ray,cpu]" && python bench/teacher_ray.py [--profile smoke] [--n 32] [--json out.json]

Both engines annotate the first ``--n`` corpus sentences of the profile with both behaviours (Tables 1 and 2), with
the profile's teacher and decoding, into fresh output directories: the local engine as one process of ``--threads``
llama.cpp (or torch) threads, Ray as ``--workers`` actors of ``threads / workers`` threads each on a local cluster
this script starts; the two alternate ``--repeats`` times and each keeps its best wall time, so both see the same
machine. Reported per engine: wall time (model loading and Ray's start included), generation seconds (per worker for
Ray), tokens, tokens/s over the wall; the ratio Ray/local over the wall and while generating (generation seconds,
Ray's per worker); the fixed cost of each (wall minus generation: loading, and for Ray the cluster and actor start,
scheduling, transfers, the driver's shard writes) and Ray's overhead per request, its fixed cost beyond the local
engine's divided by the requests.
"same text" is the share of records whose response equals the local engine's: llama.cpp words a response differently
when its slots' prompt caches hold other batches (brdlib.teacher_ray).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from brdlib.config import load_config
from brdlib.corpus import load_passages
from brdlib.teacher import items_from_passages, read_rows, run_teacher, teacher_output_dir
from brdlib.teacher_ray import run_teacher_ray


def engine_run(cfg, items, ray: bool) -> dict:
    start = time.perf_counter()
    stats = run_teacher_ray(cfg, items, progress=False) if ray else run_teacher(cfg, items, progress=False)
    wall = time.perf_counter() - start
    rows = {(r["behaviour"], r["passage_id"], r["sentence_index"]): r["response"]
            for r in read_rows(teacher_output_dir(cfg))}
    worker_seconds = sum(s.seconds for s in stats.behaviours.values())
    return {"wall_s": round(wall, 2), "records": len(rows), "generated": stats.sentences_generated,
            "tokens": stats.tokens, "tokens_per_s": round(stats.tokens / wall, 2), "worker_seconds": worker_seconds,
            "backend": stats.backend.get("backend"), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--n", type=int, default=32, help="corpus sentences (each gets both behaviours)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each engine; best wall kept")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    per_worker = max(1, args.threads // args.workers)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = [f"data.n_sentences={args.n}", "teacher.engine=local"]
        cfg0 = load_config(args.profile, [f"output_root={tmp}/corpus", *base])
        items = items_from_passages(load_passages(cfg0, progress=False))[:args.n]
        for rep in range(args.repeats):
            for name, extra in [("local", [f"teacher.llamacpp_threads={args.threads}"]),
                                ("ray", [f"teacher.ray.workers={args.workers}",
                                         f"teacher.ray.cpus_per_worker={per_worker}"])]:
                cfg = load_config(args.profile, [f"output_root={tmp}/{name}{rep}", *base, *extra])
                run = engine_run(cfg, items, ray=name == "ray")
                print(f"  run {rep} {name}: {run['wall_s']} s", flush=True)
                if name not in results or run["wall_s"] < results[name]["wall_s"]:
                    results[name] = run
    local, ray = results["local"], results["ray"]
    requests = ray["generated"]
    fixed = {"local": local["wall_s"] - local["worker_seconds"],
             "ray": ray["wall_s"] - ray["worker_seconds"] / args.workers}
    overhead = (fixed["ray"] - fixed["local"]) / max(requests, 1)
    same = sum(ray["rows"].get(k) == v for k, v in local["rows"].items()) / max(len(local["rows"]), 1)
    report = {
        "profile": args.profile, "requests": requests, "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
        "local": {k: v for k, v in local.items() if k != "rows"} | {"threads": args.threads,
                                                                     "fixed_s": round(fixed["local"], 2)},
        "ray": {k: v for k, v in ray.items() if k != "rows"} | {"workers": args.workers, "threads_each": per_worker,
                                                                 "fixed_s": round(fixed["ray"], 2)},
        "ray_over_local_tokens_per_s": round(ray["tokens_per_s"] / max(local["tokens_per_s"], 1e-9), 3),
        "ray_over_local_while_generating": round(local["worker_seconds"] / max(ray["worker_seconds"] / args.workers,
                                                                                1e-9), 3),
        "ray_overhead_s_per_request": round(overhead, 3),
        "same_text": round(same, 3),
    }
    print(f"{args.profile}: {requests} requests ({report['local']['backend']})")
    for name in ("local", "ray"):
        r = report[name]
        print(f"  {name:5s} wall {r['wall_s']:7.1f} s (fixed {r['fixed_s']:5.1f} s)  tokens {r['tokens']:6d}  "
              f"{r['tokens_per_s']:7.1f} tokens/s")
    print(f"  ray / local tokens/s: {report['ray_over_local_tokens_per_s']:.2f}x over the wall, "
          f"{report['ray_over_local_while_generating']:.2f}x while generating; ray's fixed cost beyond local's "
          f"{report['ray_overhead_s_per_request']:.3f} s/request; same text {100 * same:.0f}%")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
