"""Teacher generation speed: batched transformers and llama.cpp against a naive one-prompt-at-a-time loop.

    python bench/teacher_throughput.py [--profile smoke] [--n 16] [--behaviour ner] [--repeats 2] [--json out.json]

All backends run in this one process on the same prompts (the profile's teacher, the Table 1 or 2
prompt on the first ``--n`` corpus sentences), interleaved, ``--repeats`` times each, best time kept,
so the ratios compare like with like on whatever else the machine is doing. Speed is tokens generated
per wall-clock second (and sentences per second); "same as naive" is the share of responses identical
to the naive loop's text (llama.cpp runs the quantized GGUF file, so it may word a few responses
differently). Targets on a 2-core CPU: batched >= 3x naive, llama.cpp >= 2x naive. On a CUDA machine
the transformers rows are repeated on the GPU, and vLLM is added when installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence

from brdlib.backends import (
    DecodingParams,
    Generation,
    LlamaCppBackend,
    TransformersBackend,
    llamacpp_available,
    naive_generate,
    vllm_available,
)
from brdlib.config import load_config
from brdlib.prompts import get_template

FALLBACK_SENTENCES = [
    "Beginners BBQ Class Taking Place in Missoula!",
    "Thursday, September 22nd join World Class BBQ Champion, Tony Balay from Lonestar Smokehouse.",
    "The cost to be in the class is $35 per person, and for spectators it is free.",
    "Paris is the capital of France and its largest city.",
]


def corpus_sentences(cfg, n: int) -> tuple[list[str], str]:
    """The first n sentences of the profile's corpus (or a fixed fallback list when it cannot be read)."""
    try:
        from brdlib.corpus import load_passages

        sents = [s for p in load_passages(cfg, progress=False) for s in p.sentences][:n]
        if len(sents) == n:
            return sents, f"first {n} sentences of corpus {cfg.data.corpus}"
    except Exception as err:  # noqa: BLE001 - a bench still runs without the corpus
        print(f"(corpus unavailable: {err}; using fixed sentences)")
    return [FALLBACK_SENTENCES[i % len(FALLBACK_SENTENCES)] + f" ({i})" for i in range(n)], "fixed sentences"


def timed(fn: Callable[[], list[Generation]]) -> tuple[list[Generation], float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def row(name: str, gens: Sequence[Generation], secs: float, naive: Sequence[Generation] | None,
        naive_tps: float | None) -> dict:
    tokens = sum(g.n_tokens for g in gens)
    tps = tokens / secs
    same = sum(a.text == b.text for a, b in zip(gens, naive, strict=True)) / len(gens) if naive else 1.0
    return {"backend": name, "prompts": len(gens), "tokens": tokens, "seconds": round(secs, 2),
            "sentences/s": round(len(gens) / secs, 3), "tokens/s": round(tps, 2),
            "x naive (tokens/s)": round(tps / naive_tps, 2) if naive_tps else 1.0,
            "same as naive": f"{100 * same:.0f}%"}


def run_device(cfg, device: str, prompts: list[str], params: DecodingParams, prefix: str, batch_size: int,
               threads: int | None, repeats: int) -> list[dict]:
    """naive, batched (with and without the prefix cache) and llama.cpp/vLLM on one device.

    Each is run ``repeats`` times, interleaved, and its best time kept: the machine is shared, and the
    best of several runs is the least disturbed one (as timeit does).
    """
    from brdlib.models import load_model

    loaded = load_model(cfg.models.teacher, device=device, dtype="float32" if device == "cpu" else "bfloat16")
    runners: dict[str, Callable[[], list[Generation]]] = {}
    for prefix_cache in (False, True):  # built first: on CPU this makes the weights resident for every row
        backend = TransformersBackend(loaded, batch_size=batch_size, prefix_cache=prefix_cache)
        label = f"transformers batched, batch {batch_size}{', prefix cache' if prefix_cache else ''} ({device})"
        runners[label] = lambda b=backend: b.generate(prompts, params, shared_prefix=prefix)
    naive_label = f"naive model.generate loop ({device})"
    runners = {naive_label: lambda: naive_generate(loaded, prompts, params), **runners}
    closers = []
    if device == "cpu" and llamacpp_available():
        from brdlib.embedded import gguf_path
        from brdlib.specs import embedded_name

        name = embedded_name(cfg.models.teacher)
        if name:
            lcpp = LlamaCppBackend(gguf_path(name), cfg.models.teacher, batch_size=batch_size, n_threads=threads)
            runners[f"llama.cpp (xllamacpp), {batch_size} slots, {lcpp.n_threads} threads (cpu)"] = \
                lambda: lcpp.generate(prompts, params)
            closers.append(lcpp)
    if device == "cuda" and vllm_available():
        from brdlib.backends import VllmBackend
        from brdlib.embedded import ensure_converted
        from brdlib.models import resolve_spec

        spec = resolve_spec(cfg.models.teacher)
        path = str(ensure_converted(spec.source)) if spec.kind == "embedded" else spec.source
        vllm = VllmBackend(path, cfg.models.teacher, batch_size=len(prompts))
        runners["vLLM, prefix caching (cuda)"] = lambda: vllm.generate(prompts, params)
    best: dict[str, tuple[float, list[Generation]]] = {}
    for rep in range(repeats):
        for label, fn in runners.items():
            gens, secs = timed(fn)
            tokens = sum(g.n_tokens for g in gens)
            print(f"  run {rep + 1}/{repeats}: {label}: {secs:.1f}s, {tokens} tokens", flush=True)
            if label not in best or secs < best[label][0]:
                best[label] = (secs, gens)
    for c in closers:
        c.close()
    naive_secs, naive = best[naive_label]
    naive_row = row(naive_label, naive, naive_secs, None, None)
    rows = [naive_row]
    for label, (secs, gens) in best.items():
        if label != naive_label:
            rows.append(row(label, gens, secs, naive, naive_row["tokens/s"]))
    for r in rows:
        r["runs"] = repeats
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--n", type=int, default=16, help="prompts (corpus sentences)")
    parser.add_argument("--behaviour", default="ner", choices=["ner", "qra"])
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the profile's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's teacher.batch_size")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each backend, interleaved; best kept")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    cfg = load_config(args.profile)
    template = get_template(args.behaviour)
    sentences, where = corpus_sentences(cfg, args.n)
    prompts = [template.render(s) for s in sentences]
    params = DecodingParams(max_new_tokens=args.max_new_tokens or cfg.teacher.max_new_tokens, stop=template.stop)
    batch_size = args.batch_size or cfg.teacher.batch_size
    print(f"teacher {cfg.models.teacher}; {args.behaviour} prompt on {where}; greedy, max_new_tokens "
          f"{params.max_new_tokens}; {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}")
    start = time.perf_counter()
    rows = run_device(cfg, "cpu", prompts, params, template.prefix, batch_size, args.threads, args.repeats)
    if torch.cuda.is_available():
        rows += run_device(cfg, "cuda", prompts, params, template.prefix, batch_size, args.threads, args.repeats)
    import pandas as pd

    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    print(f"bench wall {time.perf_counter() - start:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"profile": args.profile, "behaviour": args.behaviour, "prompts": where, "rows": rows}, fh,
                      indent=2)


if __name__ == "__main__":
    main()
