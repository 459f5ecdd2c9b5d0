"""The shape of the task examples that ``brdlib.plan`` counts scoring work with, measured on the offline mirror.

    python bench/task_shapes.py [--per-task 200] [--out bench/results/task_shapes.json]

For each Table 9 task and each BIG-bench task of the mirror (the smoke profile's data source, every selected task):
mean tokens of the scored prompt and of one candidate answer (the smoke student's tokenizer, SmolLM2's, as
``brdlib.scoring`` encodes them, without special tokens), mean candidates, and mean sentences of the task input
(``brdlib.protocols.input_passage``: what the teacher reads for BRD²). Up to ``--per-task`` examples of the
evaluation split per task, stratified as the profiles sample them. ``brd plan`` reads the output file, where it
is present, in place of its assumed shapes (labelled measured, with this file as source). Not a speed benchmark:
no ratio, only counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from brdlib.config import REPO_ROOT, load_config
from brdlib.embedded import tokenizer_dir
from brdlib.models import pretrained_tokenizer
from brdlib.protocols import ProtocolError, input_passage
from brdlib.tasks import load_examples, task_names

OUT = REPO_ROOT / "bench" / "results" / "task_shapes.json"


def _sentences(example) -> int:
    """Sentences the teacher would read of one input; 0 for a BIG-bench input whose text is all in its prompt."""
    try:
        return len(input_passage(example).sentences)
    except ProtocolError:
        return 0


def shape(examples: list, tokenizer) -> dict[str, float]:
    """Mean prompt tokens, answer tokens, candidates and input sentences of ``examples``."""
    prompts = [len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]) for ex in examples]
    answers = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for ex in examples for c in ex.continuations]
    sentences = [_sentences(ex) for ex in examples]
    return {"n": len(examples), "prompt_tokens": round(statistics.mean(prompts), 1),
            "answer_tokens": round(statistics.mean(answers), 2),
            "candidates": round(statistics.mean(len(ex.candidates) for ex in examples), 2),
            "sentences": round(statistics.mean(sentences), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-task", type=int, default=200, help="examples per task (stratified)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    cfg = load_config("smoke", [f"data.max_examples_per_task={args.per_task}", "data.max_bigbench_tasks=null",
                                "data.bigbench_exclude=[]"])
    tokenizer = pretrained_tokenizer(str(tokenizer_dir(cfg.models.student)))
    start, tasks = time.perf_counter(), {}
    for task in task_names(cfg):
        tasks[task] = shape(load_examples(cfg, task, "test"), tokenizer)
        print(task, tasks[task], flush=True)
    bb = [v for k, v in tasks.items() if k.startswith("bigbench:")]
    report = {
        "what": "mean prompt tokens, answer tokens, candidates and input sentences per task example (brdlib.plan)",
        "tokenizer": f"{cfg.models.student} (SmolLM2's), no special tokens", "data": "offline mirror (smoke profile)",
        "per_task": args.per_task, "seconds": round(time.perf_counter() - start, 1), "tasks": tasks,
        "bigbench_mean": {k: round(statistics.mean(v[k] for v in bb), 2) for k in bb[0]} if bb else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
