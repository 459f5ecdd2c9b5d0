"""Training throughput of packed blocks against naive padded batching, on the profile's student.

    python bench/train_throughput.py [--profile smoke] [key=value ...] [--steps 6] [--warmup 1] [--batch 4]

Both are measured in this run, each in a fresh process (so that peak memory is each one's own), with the
transformers Trainer, the same student, passages, batch size and learning rate:

- packed: passages closed by eos, concatenated and cut into full ``max_length`` blocks (brdlib.train);
- padded: one passage per row (cut at ``max_length``), each batch padded to its longest row
  (``DataCollatorForSeq2Seq``, labels -100 on padding), in random order, the usual naive baseline.

Reported: real (non-padding) tokens per second after ``warmup`` steps, all tokens processed per second, the
padding share of processed tokens, seconds per step and peak memory (process max RSS on CPU, max allocated
on CUDA); then the ratio of real tokens/s, packed over padded. The passages are the profile's assembled
``brd`` variant when it exists, else its corpus passages as D_ORI (said in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def passages_for(profile: str, overrides: list[str], limit: int) -> tuple[list[str], str]:
    """Texts to train on and a line saying where they come from."""
    from brdlib.assemble import VARIANTS, build_rows, index_behaviours, load_variant
    from brdlib.config import load_config
    from brdlib.store import passages_dir

    cfg = load_config(profile, overrides)
    if (passages_dir(cfg, "brd") / "card.json").is_file():
        texts = load_variant(cfg, "brd")["text"][:limit]
        return texts, f"{len(texts)} passages of the assembled 'brd' variant (D_TRAIN) of profile {profile}"
    from brdlib.corpus import load_passages

    passages = load_passages(cfg)
    rows, _ = build_rows(passages, index_behaviours([], passages), VARIANTS["ori"], cfg.passages.sep, cfg.seed)
    texts = [r["text"] for r in rows][:limit]
    return texts, (f"{len(texts)} D_ORI passages of profile {profile}'s corpus "
                   "(no assembled 'brd' variant yet: run notebook 02 to bench on D_TRAIN)")


def child(mode: str, profile: str, overrides: list[str], data: Path, steps: int, warmup: int, batch: int,
          max_length: int) -> dict:
    """Train ``warmup + steps`` steps in ``mode`` and measure the last ``steps``."""
    import resource

    import datasets
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from brdlib.assemble import encode_passages
    from brdlib.config import load_config
    from brdlib.models import load_model
    from brdlib.packing import pack_dataset

    cfg = load_config(profile, overrides)
    device = cfg.resolved_device()
    loaded = load_model(cfg.models.student, device="cpu", dtype="float32")
    tok, model = loaded.tokenizer, loaded.model
    model.config.use_cache = False
    texts = json.loads(data.read_text())
    if mode == "packed":
        passages = datasets.Dataset.from_dict({"text": texts})
        ds, _ = pack_dataset(passages, tok, max_length, cfg.train.pack_batch_passages)
        base_collator = default_data_collator
    else:
        ids = [x[:max_length] for x in encode_passages(tok, texts)]
        ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
        base_collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100, padding="longest")
    timed: list[tuple[int, int]] = []  # (real tokens, all tokens) of each timed step's batch

    class CountingTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001
            if self.state.global_step >= warmup:  # this step is warmup + 1 or later
                mask = inputs["attention_mask"]
                timed.append((int(mask.sum()), int(mask.numel())))
            return super().training_step(model, inputs, num_items_in_batch)

    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            if device == "cuda":
                torch.cuda.synchronize()
            if state.global_step in (warmup, warmup + steps):
                marks["start" if state.global_step == warmup else "end"] = time.perf_counter()

    args = TrainingArguments(
        output_dir=str(data.parent / f"trainer-{mode}"), max_steps=warmup + steps, per_device_train_batch_size=batch,
        learning_rate=cfg.train.learning_rate, save_strategy="no", logging_strategy="no", report_to="none",
        use_cpu=device == "cpu", bf16=device == "cuda" and cfg.resolved_dtype() == "bfloat16", seed=cfg.seed,
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
    )
    CountingTrainer(model=model, args=args, train_dataset=ds, data_collator=base_collator, callbacks=[Clock()]).train()
    t0, t1 = marks["start"], marks["end"]
    assert len(timed) == steps, (len(timed), steps)
    real = sum(r for r, _ in timed)
    total = sum(a for _, a in timed)
    if device == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max allocated"
    else:
        peak_mb, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"
    return {
        "mode": mode, "rows": len(ds), "steps timed": steps, "s/step": round((t1 - t0) / steps, 2),
        "real tokens/s": round(real / (t1 - t0), 1), "all tokens/s": round(total / (t1 - t0), 1),
        "padding %": round(100 * (1 - real / total), 1), "peak MB": round(peak_mb), "peak memory": peak_kind,
        "device": device, "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("overrides", nargs="*", help="key=value profile overrides, e.g. output_root=/tmp/run")
    parser.add_argument("--steps", type=int, default=6, help="steps timed per mode")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not timed")
    parser.add_argument("--batch", type=int, help="rows per step (default: the profile's train.batch_size)")
    parser.add_argument("--max-length", type=int, help="block length (default: the profile's train.max_length)")
    parser.add_argument("--passages", type=int, default=2000, help="at most this many passages")
    parser.add_argument("--child", choices=["packed", "padded"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from brdlib.config import load_config

    cfg = load_config(args.profile, args.overrides)
    batch = args.batch or cfg.train.batch_size
    max_length = args.max_length or cfg.train.max_length
    if args.child:
        result = child(args.child, args.profile, args.overrides, args.data, args.steps, args.warmup, batch,
                       max_length)
        print("RESULT " + json.dumps(result))
        return

    import pandas as pd

    texts, where = passages_for(args.profile, args.overrides, args.passages)
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="brd-bench-") as tmp:
        data = Path(tmp) / "texts.json"
        data.write_text(json.dumps(texts))
        for mode in ("packed", "padded"):
            cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--profile", args.profile,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(batch),
                   "--max-length", str(max_length), *args.overrides]
            out = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.split("RESULT ", 1)[1]))
    table = pd.DataFrame(results)
    print(f"profile {args.profile}: student {cfg.models.student}, batch {batch} x {max_length} tokens, "
          f"{args.steps} steps timed after {args.warmup} warm-up step(s)")
    print(f"data: {where}")
    print(table.to_markdown(index=False))
    packed, padded = results
    print(f"packed / padded, real tokens/s: {packed['real tokens/s'] / padded['real tokens/s']:.2f}x   "
          f"(bench wall {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
