"""Scoring throughput: brdlib's batched scorer against lm-evaluation-harness's HFLM.loglikelihood.

    pip install -e ".[bench]" && python bench/scoring_throughput.py [--model smollm2-135m-instruct] [--n 64]

Both score the same (prompt, candidate) requests with the same model in this run, and read them alike
(``brdlib.scoring``'s docstring): the tokenizer's own start tokens (lm-eval's default since 0.4.10; older versions
add none, so compare with lm-eval >= 0.4.10) and contexts left-truncated to the model's positions. Reports
examples/s, the ratio, and the largest |Δ log-likelihood| between the two (target: ratio ≥ 1.5, |Δ| ≤ 1e-3).
The requests are multiple-choice prompts shaped like the paper's Table 9 tasks (NLI with three
candidates, sentiment with two), built here so the benchmark needs no data mirror.
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def make_requests(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    subjects = ["The committee", "A small dog", "The new bridge", "My neighbour", "The museum", "Our team"]
    verbs = ["approved the plan", "crossed the river", "opened last spring", "won the final", "closed early"]
    groups = []
    for i in range(n):
        s, v = rng.choice(subjects), rng.choice(verbs)
        extra = " ".join(rng.choice(["really", "quite", "very", "almost", "never"]) for _ in range(rng.randint(0, 30)))
        if i % 2:
            groups.append((f"{s} {v} {extra}. Question: {s} {rng.choice(verbs)}. True, False or Neither? Answer:",
                           [" True", " False", " Neither"]))
        else:
            groups.append((f"{s} {v}, {extra} It was", [" great", " terrible"]))
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n", type=int, default=64, help="examples")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from brdlib.models import load_model
    from brdlib.scoring import score_candidates

    torch.manual_seed(0)
    loaded = load_model(args.model)
    groups = make_requests(args.n)
    n_req = sum(len(c) for _, c in groups)

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=args.batch_size * 3, device="cpu")
    requests = [Instance("loglikelihood", {}, (p, c), i) for i, (p, cs) in enumerate(groups) for c in cs]

    def run_ours() -> list:
        return score_candidates(loaded.model, loaded.tokenizer, groups, batch_size=args.batch_size)

    def run_lm_eval() -> list:
        return lm.loglikelihood(requests, disable_tqdm=True)

    run_ours(), run_lm_eval()  # warm-up: first-call allocations count for neither
    times: dict[str, list[float]] = {"ours": [], "lm": []}
    results: dict[str, list] = {}
    for _ in range(args.repeats):  # interleaved, best of N: fair under background load
        for name, fn in (("ours", run_ours), ("lm", run_lm_eval)):
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    t_ours, t_lm = min(times["ours"]), min(times["lm"])
    ours, theirs = results["ours"], results["lm"]

    flat = [s.sum_logprob for row in ours for s in row]
    max_delta = max(abs(a - b) for a, (b, _) in zip(flat, theirs, strict=True))
    threads = torch.get_num_threads()
    print(f"model {args.model}, {args.n} examples, {n_req} (prompt, candidate) requests, {threads} threads")
    print(f"lm-eval HFLM.loglikelihood: {t_lm:7.2f}s  {args.n / t_lm:7.2f} examples/s  (best of {args.repeats})")
    print(f"brdlib score_candidates:    {t_ours:7.2f}s  {args.n / t_ours:7.2f} examples/s  (best of {args.repeats})")
    print(f"ratio brdlib / lm-eval: {t_lm / t_ours:.2f}x   max |Δ log-likelihood|: {max_delta:.2e}")


if __name__ == "__main__":
    main()
