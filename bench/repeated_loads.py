"""What a notebook pays each time it loads a model it has loaded before, the old way against load_model.

    python bench/repeated_loads.py [--model qwen2.5-coder-0.5b-instruct] [--dtype bfloat16] [--repeats 3]

Both ways load the same converted model (BRD_CACHE_DIR) in this one process, alternately, after a warm-up load:

* before: ``from_pretrained(disable_mmap=True)`` (the file read into a buffer, then copied out of it) and a freshly
  built tokenizer, then a full ``gc.collect()`` as ``free_memory`` did;
* now: :func:`brdlib.models.load_model` (the file mapped, then copied once; the tokenizer shared) and
  :func:`brdlib.models.free_memory` (its collection walks only what was made since the last one).

A smoke run loads ~60 models; the ratio is what each load saves. Best of ``--repeats`` each.
"""

from __future__ import annotations

import argparse
import gc
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brdlib.embedded import ensure_converted
    from brdlib.models import free_memory, load_model, resolve_spec

    path = str(ensure_converted(resolve_spec(args.model).source, dtype=args.dtype))
    dtype = getattr(torch, args.dtype)

    def before() -> float:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, disable_mmap=True)
        del model, tokenizer
        gc.unfreeze()  # the full collection free_memory made before: every object walked
        gc.collect()
        gc.freeze()  # so that now() is timed as in a run, walking only what was made since
        return time.perf_counter() - start

    def now() -> float:
        start = time.perf_counter()
        loaded = load_model(path, device="cpu", dtype=args.dtype)
        del loaded
        free_memory()
        return time.perf_counter() - start

    now()  # warm-up: imports, page cache, the shared tokenizer, the first freeze
    times: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(args.repeats):
        times["before"].append(before())
        times["now"].append(now())
    best = {k: min(v) for k, v in times.items()}
    print(f"model: {args.model} ({args.dtype}), {path}")
    for k, v in times.items():
        print(f"{k:6s} load + free: best {best[k]:6.2f}s  (all: {', '.join(f'{t:.2f}' for t in v)})")
    print(f"ratio before/now: {best['before'] / best['now']:.1f}x")


if __name__ == "__main__":
    main()
