"""Scoring throughput: brdlib's scorer against lm-evaluation-harness's HFLM.loglikelihood, on the paper's tasks.

    pip install -e ".[bench]" && python bench/scoring_throughput.py [--model smollm2-135m-instruct] [--n 8]

Both score the same (prompt, candidate) requests of real task examples (``brdlib.tasks.load_examples`` on the smoke
profile: the data mirror, the paper's Table 9 templates and BIG-bench's own) with the same model in float32 on the
CPU, in this run, interleaved, best of ``--repeats``, on ``--threads`` torch threads. Both read the requests alike
(``brdlib.scoring``'s docstring: the tokenizer's start tokens, lm-eval >= 0.4.10). Both get ``--batch-size``: ours
counts examples (their candidates ride along) and is an upper bound: brdlib cuts a batch where padding short
examples to its longest would cost more than a pass of their own (``brdlib.scoring.plan_batches``; the pass's cost,
measured here, is printed first); lm-eval counts requests, one candidate each, grouping one-token candidates of one
context into one row (on this CPU lm-eval is no faster at 2-5x larger batches, whose full-vocabulary logits run to
gigabytes).

Per task it prints the seconds of each, the ratio, the largest |Δ log-likelihood| and both accuracies (sum rule,
lm-eval's ``acc``). Targets (issue 19): ratio >= 3 on multi-token tasks (long shared contexts, several multi-token
candidates: BIG-bench's understanding_fables; ``--tasks bigbench:discourse_marker_prediction`` has 10 per example),
>= 1.3 on single-token ones (Table 9's BoolQ, SST-2), |Δ| <= 1e-3, identical accuracy.
"""

from __future__ import annotations

import argparse
import time

import torch

DEFAULT_TASKS = "bigbench:understanding_fables,boolq,sst2"


def bench_task(model, tokenizer, examples, batch_size: int, repeats: int, method: str) -> dict:
    """Time both scorers on ``examples`` (interleaved, best of ``repeats``) and compare their log-likelihoods."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from brdlib.scoring import predict, score_candidates

    groups = [(e.prompt, list(e.continuations)) for e in examples]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
    requests = [Instance("loglikelihood", {}, (p, c), i) for i, (p, cs) in enumerate(groups) for c in cs]
    runs = {"ours": lambda: score_candidates(model, tokenizer, groups, batch_size=batch_size, method=method),
            "lm": lambda: lm.loglikelihood(requests, disable_tqdm=True)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, list] = {name: fn() for name, fn in runs.items()}  # warm-up
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    ours = [s.sum_logprob for row in results["ours"] for s in row]
    theirs = [ll for ll, _ in results["lm"]]
    rows, k = [], 0
    for _, cands in groups:
        rows.append(theirs[k:k + len(cands)])
        k += len(cands)
    acc_ours = sum(predict(r, "sum") == e.gold for r, e in zip(results["ours"], examples, strict=True))
    acc_lm = sum(max(range(len(r)), key=r.__getitem__) == e.gold for r, e in zip(rows, examples, strict=True))
    return {"t_ours": min(times["ours"]), "t_lm": min(times["lm"]), "n_req": len(requests),
            "delta": max(abs(a - b) for a, b in zip(ours, theirs, strict=True)),
            "acc_ours": acc_ours / len(examples), "acc_lm": acc_lm / len(examples)}


def pass_cost_tokens(model, repeats: int = 5) -> tuple[float, float, float]:
    """What one forward pass costs beyond its tokens, in token positions: ``(t(1) - per_token) / per_token`` from the
    best times of a 1- and a 129-token pass (``brdlib.scoring.CPU_PASS_TOKENS`` is this figure for SmolLM2-135M)."""
    def best(n: int) -> float:
        ids = torch.full((1, n), 100, dtype=torch.long)
        with torch.no_grad():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                times.append(time.perf_counter() - start)
        return min(times)

    one, many = best(1), best(129)
    per_token = (many - one) / 128
    return (one - per_token) / per_token, one, per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated brdlib task names")
    parser.add_argument("--n", type=int, default=8, help="examples per task (stratified test sample)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="auto", choices=["auto", "packed", "kv"], help="brdlib's scoring pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from brdlib.config import load_config
    from brdlib.models import load_model
    from brdlib.scoring import CPU_PASS_TOKENS
    from brdlib.tasks import load_examples

    cfg = load_config("smoke", [f"data.max_examples_per_task={args.n}"])
    loaded = load_model(args.model, dtype="float32")
    print(f"model {args.model} (float32, CPU), {torch.get_num_threads()} threads, batch {args.batch_size} examples, "
          f"method {args.method}, best of {args.repeats}")
    cost, one, per_token = pass_cost_tokens(loaded.model)
    print(f"one pass costs {cost:.0f} token positions beyond its tokens ({one * 1e3:.0f} ms for 1 token, "
          f"{per_token * 1e3:.2f} ms per further token; brdlib.scoring.CPU_PASS_TOKENS = {CPU_PASS_TOKENS})")
    for task in args.tasks.split(","):
        examples = load_examples(cfg, task, "test")
        ctx = sum(len(loaded.tokenizer(e.prompt)["input_ids"]) for e in examples) / len(examples)
        cand = [len(loaded.tokenizer(c)["input_ids"]) for e in examples for c in e.continuations]
        r = bench_task(loaded.model, loaded.tokenizer, examples, args.batch_size, args.repeats, args.method)
        print(f"{task}: {len(examples)} examples, {r['n_req']} requests, prompt {ctx:.0f} tokens, candidates "
              f"{sum(cand) / len(cand):.1f} tokens (max {max(cand)})\n"
              f"  lm-eval {r['t_lm']:6.2f}s  brdlib {r['t_ours']:6.2f}s  ratio {r['t_lm'] / r['t_ours']:.2f}x  "
              f"max |Δ loglik| {r['delta']:.1e}  acc (sum) brdlib {r['acc_ours']:.3f} lm-eval {r['acc_lm']:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
