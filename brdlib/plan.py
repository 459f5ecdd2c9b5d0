"""What a profile costs before any run: the work of every stage, counted from the profile alone, and hours on
N devices of a kind (``brd plan PROFILE --gpus N --gpu KIND``; notebook 00).

    from brdlib.plan import make_plan
    plan = make_plan(load_config("paper"), gpus=4, kind="a100")
    plan.table()          # stage, notebook, kind, work, FLOPs, rate (value, label, source), hours
    print(plan.render())  # the same as text, with the total and every rate and assumption listed

**Work** is counted from the profile (:class:`brdlib.config.Config`), as the notebooks run it, without loading a
model, the corpus or a task: teacher requests (``data.n_sentences`` x behaviours in notebook 01, the second
teacher's ``protocols.second_teacher_sentences`` for Table 6 in 04, the protocols' task inputs in 05) with their
prompt and generated tokens; training tokens of every student (``max_steps x batch_size x max_length`` of its
recipe, :meth:`Config.recipe`); scoring requests (examples x candidates) of every model each notebook scores.
Split sizes are the hub datasets' (:data:`HUB_SPLITS`) and BIG-bench's selection file, cut by the profile's caps;
the prompt and answer tokens, candidates and input sentences of a task example are measured on the offline mirror
(``python bench/task_shapes.py`` -> :data:`TASK_SHAPES_JSON`) where that file is present, else :data:`TASK_SHAPES`.

**Time** is FLOPs over a rate: ``2·N·tokens`` for a forward pass (generation, scoring), ``6·N·tokens`` for a
training step (``8·N`` with gradient checkpointing, which runs the forward pass twice; attention's own FLOPs are
left out) for a model of N parameters, over a rate in FLOP/s per device. Every rate is a :class:`Rate` labelled
``measured`` (with the file it was read from) or ``assumed`` (with its source): a GPU's rate is its datasheet's
dense bf16 peak times an assumed model-FLOPs utilisation (MFU), or a measured MFU where ``bench/gpu_check.sh``'s
output for that GPU is present; the ``cpu`` kind (this project's 2-core machine) uses the FLOP/s the committed
smoke run measured (``figures/smoke/``). Several devices are assumed to scale linearly (hours / N).
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from brdlib.bigbench import REDUCED_SET, SELECTION_CSV
from brdlib.blind import ABLATION_STUDENTS, KD_ROLES, TABLE3_ROLES
from brdlib.config import REPO_ROOT, Config, load_config
from brdlib.data_size import data_size_fractions
from brdlib.probing import probing_tasks
from brdlib.prompts import TEMPLATES
from brdlib.protocols import RELAXED_STUDENTS, SUPERVISED_STUDENTS
from brdlib.specs import EMBEDDED_MODELS, classify_spec
from brdlib.tasks import TABLE9_TASKS, TASKS, bigbench_task_selection

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ASSUMED_MFU", "CHARS_PER_TOKEN", "DEVICE_KINDS", "GPU_CHECK_JSON", "HUB_SPLITS", "MODEL_PARAMS", "SMOKE_FIGURES",
    "TASK_SHAPES", "TASK_SHAPES_JSON", "TASK_SHAPE_SOURCE", "TINY_PARAMS", "WORK_KINDS", "Counter", "DeviceKind",
    "Plan", "PlanError", "Rate", "Stage", "TaskCount", "TaskShape", "Work", "count_work", "device_rates", "local_kind",
    "make_plan", "measured_shapes", "model_params", "plan_table", "sentence_tokens", "smoke_answer_tokens",
    "task_counts",
]

Label = Literal["measured", "assumed"]
WorkKind = Literal["generate", "train", "score"]
WORK_KINDS: tuple[WorkKind, ...] = ("generate", "train", "score")


class PlanError(ValueError):
    """A plan that cannot be made: unknown device kind, a model of unknown size, a missing measurement (named)."""


@dataclass(frozen=True)
class Rate:
    """One number the plan rests on, with its unit, whether it was measured or assumed, and where it comes from."""

    name: str
    value: float
    unit: str
    label: Label
    source: str
    note: str = ""  # how it was derived, printed with the rates under the table

    def __post_init__(self) -> None:
        if self.label not in ("measured", "assumed"):
            raise PlanError(f"rate {self.name!r}: label must be 'measured' or 'assumed', got {self.label!r}")
        if not self.source.strip():
            raise PlanError(f"rate {self.name!r} has no source")

    def line(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return f"{self.name}: {self.value:,.4g} {self.unit} [{self.label}; {self.source}{note}]"


@dataclass(frozen=True)
class DeviceKind:
    """A kind of device a plan is made for: its dense bf16 peak (None: rates measured, no peak) and memory."""

    name: str
    description: str
    peak_bf16_flops: float | None
    memory_gib: float
    source: str
    device_name: str = ""  # substring of torch.cuda.get_device_name (matches bench/gpu_check.sh's output)


DEVICE_KINDS: dict[str, DeviceKind] = {k.name: k for k in [
    DeviceKind("a100", "NVIDIA A100 80 GB (SXM)", 312e12, 80,
               "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS dense (624 with sparsity)", "A100"),
    DeviceKind("h100", "NVIDIA H100 80 GB (SXM)", 989e12, 80,
               "NVIDIA H100 datasheet (SXM): BF16 Tensor Core 989 TFLOPS dense (1,979 with sparsity)", "H100"),
    DeviceKind("h200", "NVIDIA H200 141 GB (SXM)", 989e12, 141,
               "NVIDIA H200 datasheet (SXM): BF16 Tensor Core 989 TFLOPS dense (1,979 with sparsity)", "H200"),
    DeviceKind("l4", "NVIDIA L4 24 GB", 121e12, 24,
               "NVIDIA L4 datasheet: BF16 Tensor Core 121 TFLOPS dense (242 with sparsity)", "L4"),
    DeviceKind("a10", "NVIDIA A10 24 GB", 125e12, 24,
               "NVIDIA A10 datasheet: BF16 Tensor Core 125 TFLOPS dense (250 with sparsity)", "A10"),
    DeviceKind("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", 165.2e12, 24,
               "NVIDIA Ada Lovelace architecture whitepaper (RTX 4090): 165.2 TFLOPS dense BF16 with FP32 accumulate",
               "RTX 4090"),
    DeviceKind("cpu", "this project's 2-core CPU machine (AVX512-BF16), rates of the committed smoke run", None, 24,
               "the smoke run's measured FLOP/s (figures/smoke/)"),
]}
"""Accepted ``--gpu`` kinds."""

ASSUMED_MFU: dict[WorkKind, Rate] = {
    "generate": Rate("MFU of teacher generation", 0.20, "of the bf16 peak", "assumed",
                     "vLLM continuous batching of short greedy answers, the few-shot prefix cached; not measured here"),
    "train": Rate("MFU of training", 0.35, "of the bf16 peak", "assumed",
                  "dense bf16 training with the HF Trainer; recomputation of gradient checkpointing is counted in the "
                  "FLOPs (8·N per token), not here; not measured here"),
    "score": Rate("MFU of scoring", 0.30, "of the bf16 peak", "assumed",
                  "forward passes over padded batches of multiple-choice contexts; not measured here"),
}
"""Model-FLOPs utilisation on a GPU where bench/gpu_check.sh has not measured it."""

CHARS_PER_TOKEN = Rate("characters per token", 4.0, "characters", "assumed",
                       "rule of thumb for English text under BPE tokenizers (OpenAI's tokenizer guide)")
SMOKE_FIGURES = REPO_ROOT / "figures" / "smoke"
"""The committed smoke run's tables: measured teacher and training rates, answer and sentence lengths."""
GPU_CHECK_JSON = REPO_ROOT / "runs" / "gpu_check" / "gpu_check.json"
"""``bash bench/gpu_check.sh``'s output: where present, its training MFU replaces the assumed one for its GPU."""


@dataclass(frozen=True)
class TaskShape:
    """Assumed size of one task example: tokens of its prompt (context), of one candidate answer, and sentences of
    its input text (what the teacher annotates for BRD²)."""

    context_tokens: float
    answer_tokens: float
    sentences: float


TASK_SHAPES: dict[str, TaskShape] = {
    "xnli": TaskShape(60, 2, 2), "rte": TaskShape(80, 2, 3), "cb": TaskShape(90, 2, 4), "pawsx": TaskShape(70, 2, 2),
    "boolq": TaskShape(150, 2, 6), "sst2": TaskShape(45, 2, 1), "bigbench": TaskShape(250, 8, 3),
}
TASK_SHAPE_SOURCE = Rate("task example shapes", len(TASK_SHAPES), "tasks (prompt tokens/answer tokens/sentences): "
                         + ", ".join(f"{k} {v.context_tokens}/{v.answer_tokens}/{v.sentences}"
                                     for k, v in TASK_SHAPES.items()), "assumed",
                         "Table 9's templates with typical inputs (premise + hypothesis, BoolQ's passage); "
                         "BIG-bench prompts vary widely; not measured")

TASK_SHAPES_JSON = REPO_ROOT / "bench" / "results" / "task_shapes.json"
"""``python bench/task_shapes.py``'s output: measured shapes (and BIG-bench candidates), used where present."""


def measured_shapes(path: Path | None = None) -> dict[str, tuple[TaskShape, float]]:
    """Task -> (measured shape, mean candidates) from :data:`TASK_SHAPES_JSON` (``bigbench`` for the BIG-bench
    mean); empty when the file is absent."""
    path = TASK_SHAPES_JSON if path is None else path
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    rows = {**report["tasks"], **({"bigbench": report["bigbench_mean"]} if report.get("bigbench_mean") else {})}
    return {task: (TaskShape(r["prompt_tokens"], r["answer_tokens"], r["sentences"]), r["candidates"])
            for task, r in rows.items()}


def _shape_rate(measured: bool) -> Rate:
    if not measured:
        return TASK_SHAPE_SOURCE
    tasks = len(set(measured_shapes()) - {"bigbench"})
    return Rate("task example shapes", tasks, "tasks measured (prompt/answer tokens, candidates, input sentences)",
                "measured", "bench/results/task_shapes.json",
                "python bench/task_shapes.py: the offline mirror, <= 200 examples per task, SmolLM2's tokenizer")


HUB_SPLITS: dict[str, tuple[int, int, int]] = {
    "xnli": (392_702, 2_490, 5_010),   # facebook/xnli en: train, validation, test
    "rte": (2_241, 249, 277),          # aps/super_glue rte: train 2,490 (tune: 10% of it), validation 277
    "cb": (225, 25, 56),               # aps/super_glue cb: train 250 (tune: 10%), validation 56
    "pawsx": (49_401, 2_000, 2_000),   # google-research-datasets/paws-x en: train, validation, test
    "boolq": (8_484, 943, 3_270),      # aps/super_glue boolq: train 9,427 (tune: 10%), validation 3,270
    "sst2": (60_614, 6_735, 872),      # nyu-mll/glue sst2: train 67,349 (tune: 10%), validation 872
}
"""Examples (train, tune, test) of each Table 9 task as ``data.source: hub`` reads them (the datasets' cards;
brdlib.tasks.split_plan); for the mirror and fixtures they are upper bounds, cut by the profile's caps."""

MODEL_PARAMS: dict[str, tuple[float, str]] = {
    "lmsys/vicuna-13b-v1.5": (13.0e9, "model card: Llama 2 13B architecture"),
    "facebook/xglm-564M": (564e6, "model card / Lin et al. 2022"),
    "facebook/xglm-7.5B": (7.5e9, "model card / Lin et al. 2022"),
    "meta-llama/Llama-3.1-8B-Instruct": (8.03e9, "model card: 8.03B"),
    "Qwen/Qwen2.5-7B-Instruct": (7.62e9, "model card: 7.61B"),
    "MiniLLM/KD-gpt2-760M": (774e6, "GPT-2 large architecture (MiniLLM's 760M)"),
    "MiniLLM/MiniLLM-gpt2-760M": (774e6, "GPT-2 large architecture (MiniLLM's 760M)"),
}
"""Parameters of hub models the profiles name (embedded models: measured in figures/smoke/00_models.csv)."""
TINY_PARAMS = (1e6, "tiny random models (at most ~1M parameters; their numbers are meaningless)")


# Measured figures of the committed smoke run ---------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _smoke_params(spec: str) -> float | None:
    """Parameters of ``spec`` as notebook 00 of the smoke run counted them (``00_models.csv``), if it is there."""
    path = SMOKE_FIGURES / "00_models.csv"
    if not path.is_file():
        return None
    row = next((r for r in _read_csv(path) if r["spec"] == spec), None)
    return float(row["params_M"]) * 1e6 if row else None


def model_params(spec: str) -> tuple[float, str]:
    """Parameters of a model spec and where the number comes from; :class:`PlanError` when unknown."""
    kind = classify_spec(spec).kind
    if kind in ("tiny-random", "tiny-arch"):
        return TINY_PARAMS
    if spec in MODEL_PARAMS:
        return MODEL_PARAMS[spec]
    if kind == "embedded" and (n := _smoke_params(spec)) is not None:
        return n, "measured: figures/smoke/00_models.csv"
    name = EMBEDDED_MODELS[spec].hub_id if kind == "embedded" else spec
    match = re.search(r"(\d+(?:\.\d+)?)\s*([mMbB])(?![a-zA-Z])", name.split("/")[-1])
    if match:
        scale = 1e9 if match.group(2).lower() == "b" else 1e6
        return float(match.group(1)) * scale, f"read from the model's name {name!r}"
    raise PlanError(f"the size of model {spec!r} is unknown: add it to brdlib.plan.MODEL_PARAMS "
                    f"(known: {', '.join(MODEL_PARAMS)})")


def smoke_answer_tokens() -> dict[str, Rate]:
    """Mean generated tokens per teacher answer and behaviour, measured by the smoke run (``01_teacher_run.csv``)."""
    path = SMOKE_FIGURES / "01_teacher_run.csv"
    if not path.is_file():
        return {}
    out = {}
    for row in _read_csv(path):
        if int(row["generated"]) > 0:
            out[row["behaviour"]] = Rate(f"generated tokens per {row['behaviour']} answer",
                                         int(row["tokens"]) / int(row["generated"]), "tokens", "measured",
                                         "figures/smoke/01_teacher_run.csv (the 0.5B smoke teacher, max_new_tokens 64)")
    return out


def sentence_tokens() -> Rate:
    """Mean tokens of a corpus sentence: measured on smoke's corpus (D_ORI tokens / sentences), else assumed."""
    variants, corpus = SMOKE_FIGURES / "02_variants.csv", SMOKE_FIGURES / "00_corpus.csv"
    if variants.is_file() and corpus.is_file():
        ori = next(r for r in _read_csv(variants) if r["variant"] == "ori")
        counts = {r["count"]: r["value"] for r in _read_csv(corpus)}
        n = int(counts["sentences in passages"])
        return Rate("tokens per corpus sentence", int(ori["tokens"]) / n, "tokens", "measured",
                    "figures/smoke/02_variants.csv (ori tokens) / 00_corpus.csv (sentences): C4, SmolLM2 tokenizer")
    return Rate("tokens per corpus sentence", 32.0, "tokens", "assumed", "about 24 words of 1.3 tokens")


# Counting the work -----------------------------------------------------------------------------------------


def _n(x: float) -> str:
    """A count for the table: 1,234; 56.7k; 359M; 1.82B."""
    for at, scale, unit in ((1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if x >= at:
            return f"{x / scale:.3g}{unit}"
    return f"{x:,.0f}"


@dataclass(frozen=True)
class Work:
    """The work of one stage: FLOPs of one kind, and what they are in words."""

    stage: str
    notebook: str
    kind: WorkKind
    model: str
    flops: float
    what: str
    counts: dict[str, float] = field(default_factory=dict)


def _bigbench_table() -> dict[str, tuple[int, float]]:
    """BIG-bench task -> (examples, mean candidates as (min + max) / 2), from the selection file."""
    return {r["task"]: (int(r["n_examples"]), (int(r["min_candidates"]) + int(r["max_candidates"])) / 2)
            for r in _read_csv(SELECTION_CSV) if r["n_examples"]}


def _bigbench_names(cfg: Config) -> list[str]:
    """The profile's BIG-bench tasks as notebook 04 picks them; where the task files cannot be listed (no mirror),
    the same seeded sample of the selection file's tasks marked present in the mirror."""
    try:
        return bigbench_task_selection(cfg)
    except Exception:  # noqa: BLE001 - no mirror here: the plan reads the selection file instead
        rows = _read_csv(SELECTION_CSV)
        names = [r["task"] for r in rows if r["selected"] == "True" and r["task"] not in cfg.data.bigbench_exclude
                 and (cfg.data.source == "hub" or r["in_mirror"] == "True")]
        k = cfg.data.max_bigbench_tasks
        return sorted(random.Random(cfg.data.split_seed).sample(names, k)) if k and k < len(names) else names


@dataclass(frozen=True)
class TaskCount:
    """One task as the plan counts it: examples of each split (cut to ``data.max_examples_per_task``, as
    :func:`brdlib.tasks.load_examples` cuts them), mean candidates, and its assumed shape."""

    name: str
    train: float
    tune: float
    test: float
    heldout: float
    candidates: float
    shape: TaskShape

    def tokens(self, examples: float, candidates: float | None = None) -> float:
        """Tokens run for ``examples`` examples: the prompt once, then each candidate's answer on its cached prompt
        (brdlib.scoring's batched scorer); ``candidates`` defaults to the task's."""
        k = self.candidates if candidates is None else candidates
        return examples * (self.shape.context_tokens + k * self.shape.answer_tokens)


def task_counts(cfg: Config, names: Sequence[str]) -> list[TaskCount]:
    """Split sizes, candidates and shape of each task name (``bigbench`` expanded, ``bigbench:<t>`` kept).

    BIG-bench has no training split: train/tune/held-out are ``1 - 2f``/``f``/``f`` of the task (A.3;
    ``data.tune_fraction`` f). Table 9 tasks: :data:`HUB_SPLITS`, the held-out split being the test split. Shapes
    (and BIG-bench's mean candidates) are measured ones (:func:`measured_shapes`) where present, else
    :data:`TASK_SHAPES` (and the selection file's (min + max) / 2 candidates)."""
    table, cap, f = _bigbench_table(), cfg.data.max_examples_per_task, cfg.data.tune_fraction
    measured = measured_shapes()
    out = []
    for name in names:
        if name == "bigbench":
            out += task_counts(cfg, [f"bigbench:{t}" for t in _bigbench_names(cfg)])
            continue
        if name.startswith("bigbench:"):
            n, cands = table.get(name.split(":")[1], (0, 2.0))
            train, tune, test, heldout = n * (1 - 2 * f), n * f, n, n * f
            shape, cands = measured.get(name) or measured.get("bigbench") or (TASK_SHAPES["bigbench"], cands)
        elif name in HUB_SPLITS:
            (train, tune, test), cands = HUB_SPLITS[name], len(TASKS[name].candidates)
            shape = measured[name][0] if name in measured else TASK_SHAPES[name]
            heldout = test
        else:
            raise PlanError(f"unknown task {name!r}; accepted: {', '.join(TABLE9_TASKS)}, bigbench, bigbench:<task>")
        out.append(TaskCount(name, _cap(round(train), cap), _cap(round(tune), cap), _cap(test, cap),
                             _cap(round(heldout), cap), cands, shape))
    return out


def _cap(n: float, *caps: int | None) -> float:
    return min([n, *[c for c in caps if c is not None]])


def _protocol_task_names(cfg: Config) -> list[str]:
    """Notebook 05/06's tasks (brdlib.protocols.protocol_tasks), without reading the task files."""
    reduced = [f"bigbench:{t}" for t in REDUCED_SET]
    if cfg.protocols.relaxed_tasks is not None:
        return [t for name in cfg.protocols.relaxed_tasks for t in (reduced if name == "bigbench" else [name])]
    return [t for t in cfg.data.tasks if t in TABLE9_TASKS] + reduced


def _named(cfg: Config, ref: str) -> str:
    """The spec a scored or trained model's size is read from: a role's spec; a student of ours: the student's."""
    roles = cfg.models.roles()
    if ref in roles:
        return roles[ref]
    return ref if "/" in ref or ref in EMBEDDED_MODELS or ref.startswith("tiny-") else cfg.models.student


def _kd_spec(cfg: Config, kind: str) -> str:
    """The KD student of ``kind`` (skd, minillm): the released checkpoint, else the profile's ``kd.student``."""
    if cfg.kd.released:
        return cfg.kd.released[kind]
    return _named(cfg, cfg.kd.student)


@dataclass
class Counter:
    """Accumulates the work of a profile, one :class:`Work` per stage, and the rates the counts rest on."""

    cfg: Config
    works: list[Work] = field(default_factory=list)
    rates: dict[str, Rate] = field(default_factory=dict)

    def params(self, ref: str) -> float:
        return model_params(_named(self.cfg, ref))[0]

    def add(self, stage: str, notebook: str, kind: WorkKind, model: str, flops: float, what: str,
            **counts: float) -> None:
        self.works.append(Work(stage, notebook, kind, model, flops, what, counts))

    def uses(self, *rates: Rate) -> None:
        self.rates.update({r.name: r for r in rates})

    def generate(self, stage: str, notebook: str, role: str, sentences: float) -> None:
        """The teacher ``role`` answering every behaviour's prompt for ``sentences`` sentences."""
        cfg, answers, sent = self.cfg, smoke_answer_tokens(), sentence_tokens()
        behaviours, top = cfg.teacher.behaviours, cfg.teacher.max_new_tokens
        prompt = generated = 0.0
        for b in behaviours:
            answer = answers.get(b) or Rate(f"generated tokens per {b} answer", top / 2, "tokens", "assumed",
                                            "half of teacher.max_new_tokens (no smoke run committed)")
            self.uses(answer, sent, CHARS_PER_TOKEN)
            prompt += sentences * (len(TEMPLATES[b].prefix) / CHARS_PER_TOKEN.value + sent.value)
            generated += sentences * min(answer.value, top)
        requests = sentences * len(behaviours)
        self.add(stage, notebook, "generate", role, 2 * self.params(role) * generated,
                 f"{_n(requests)} requests ({_n(sentences)} sentences x {len(behaviours)}): {_n(prompt)} prompt tokens "
                 f"(prefix shared), {_n(generated)} generated (<= {_n(requests * top)})",
                 requests=requests, prompt_tokens=prompt, generated_tokens=generated, generated_max=requests * top)

    def train(self, stage: str, notebook: str, recipe: str, inits: Sequence[str], steps: Sequence[int] | None = None,
              teacher: str | None = None) -> None:
        """Students of ``recipe``, one per init model (``steps``: each one's, else the recipe's max_steps); KD
        students add the teacher's forward pass over the same tokens."""
        if not inits:
            return
        r = self.cfg.recipe(recipe)
        per_token = 8 if r.gradient_checkpointing else 6
        all_steps = list(steps) if steps is not None else [r.max_steps] * len(inits)
        tokens = flops = 0.0
        for init, n in zip(inits, all_steps, strict=True):
            t = n * r.batch_size * r.max_length
            tokens += t
            flops += per_token * self.params(init) * t + (2 * self.params(teacher) * t if teacher else 0)
        self.add(stage, notebook, "train", ", ".join(dict.fromkeys(inits)), flops,
                 f"{len(inits)} x {_n(sum(all_steps) / len(inits))} steps x {r.batch_size} x {r.max_length} = "
                 f"{_n(tokens)} tokens ({per_token}·N/token{' + teacher' if teacher else ''})",
                 students=len(inits), tokens=tokens)

    def score(self, stage: str, notebook: str, models: Sequence[str], tasks: Sequence[TaskCount],
              split: str = "test", cap: int | None = None, per_candidate: bool = True, every: bool = False) -> None:
        """``models`` (roles, students or specs) reading ``split`` of ``tasks``, cut to ``cap``; without a cap (and
        unless ``every``), models of ``eval.large_model_min_params`` or more are cut to
        ``eval.large_model_max_examples``, as :func:`brdlib.evaluate.evaluate_model` cuts them; every candidate is one
        request (``per_candidate``; else one text per example: prompt and gold answer); the prompt is run once per
        example, each candidate's answer on its cached prompt (:meth:`TaskCount.tokens`)."""
        if not models or not tasks:
            return
        ev = self.cfg.eval
        flops = requests = tokens = 0.0
        for ref in models:
            n_params = self.params(ref)
            large = (ev.large_model_max_examples if cap is None and not every and n_params >= ev.large_model_min_params
                     else None)
            for t in tasks:
                n = _cap(getattr(t, split), cap, large)
                k = t.candidates if per_candidate else 1
                requests += n * k
                tokens += t.tokens(n, k)
                flops += 2 * n_params * t.tokens(n, k)
        self.uses(_shape_rate(bool(measured_shapes())))
        self.add(stage, notebook, "score", ", ".join(models), flops,
                 f"{len(models)} models x {len(tasks)} tasks ({split}): {_n(requests)} requests, {_n(tokens)} tokens",
                 requests=requests, tokens=tokens)


def _teacher_and_students(c: Counter) -> None:
    """Notebooks 01 and 03: the teacher on the corpus; the BRD and FURTHER students."""
    cfg = c.cfg
    c.generate("teacher on the corpus", "01", "teacher", cfg.data.n_sentences)
    c.train("BRD student", "03", "brd", ["student"])
    c.train("FURTHER student", "03", "further", ["student"])


def _blind(c: Counter) -> None:
    """Notebook 04: ablation, Table 6 and KD students, and the blind scoring of every model."""
    cfg = c.cfg
    extra = cfg.models.extra
    tasks = task_counts(cfg, cfg.data.tasks)
    main = [t for t in tasks if not t.name.startswith("bigbench:")]
    c.train("ablation students (Tables 12, 7)", "04", "ablation", ["student"] * len(ABLATION_STUDENTS))
    kd = {kind: _kd_spec(cfg, kind) for kind in KD_ROLES}
    if not cfg.kd.released:
        c.train("KD students (SKD, MiniLLM)", "04", "kd", list(kd.values()), teacher=cfg.kd.teacher)
    c.train("KD '+BRD' students (Table 4)", "04", "kd_brd", list(kd.values()))
    full = ["teacher", "student", "brd", "further", *[r for r in TABLE3_ROLES if r in extra], *kd.values()]
    # the '+BRD' students (skd_brd, minillm_brd) are counted at their KD student's size
    others = [*ABLATION_STUDENTS, *kd.values(), *([] if cfg.kd.released else [cfg.kd.student])]
    if "second_teacher" in extra:
        n = min(cfg.protocols.second_teacher_sentences or cfg.data.n_sentences, cfg.data.n_sentences)
        c.generate("second teacher on a corpus subset (Table 6)", "04", "second_teacher", n)
        c.train("Table 6 students (one per teacher)", "04", "ablation", ["student", "student"])
        others += ["second_teacher", "brd_subset_teacher", "brd_subset_second_teacher"]
    c.score("blind scoring, Table 3 rows (every task)", "04", full, tasks)
    c.score("blind scoring, other rows (Table 9 tasks)", "04", others, main)


def _protocols(c: Counter) -> None:
    """Notebooks 05 and 06: the teacher on the task inputs (pseudo-answers, BRD²), the protocol students, their
    checkpoint selection on tune and scoring on the held-out split."""
    cfg, p = c.cfg, c.cfg.protocols
    tasks = task_counts(cfg, _protocol_task_names(cfg))
    inputs = [_cap(t.train, p.task_train_examples) for t in tasks]
    sentences = sum(n * _cap(t.shape.sentences, p.teacher_sentences_per_input) for n, t in zip(inputs, tasks,
                                                                                              strict=True))
    c.generate("teacher on the task inputs (BRD²)", "05", "teacher", sentences)
    train_tasks = [TaskCount(t.name, n, 0, 0, 0, t.candidates, t.shape) for n, t in zip(inputs, tasks, strict=True)]
    c.score("teacher's pseudo-answers (TaskDistillation)", "05", ["teacher"], train_tasks, split="train", every=True)
    students = {**RELAXED_STUDENTS, **SUPERVISED_STUDENTS}
    c.train("protocol students (relaxed, supervised)", "05, 06", "task", ["student"] * len(students))
    if p.checkpoint_candidates > 1:
        c.score("checkpoint selection on tune", "05, 06", list(students) * p.checkpoint_candidates, tasks,
                split="tune", cap=p.tune_max_examples)
    c.score("protocol scoring (held-out)", "05, 06", ["student", "brd", *students], tasks, split="heldout",
            cap=p.eval_max_examples)


def _analyses(c: Counter) -> None:
    """Notebooks 07-09: Table 5's texts, Figure 4's probes, Figure 2's students and their scoring."""
    cfg, a = c.cfg, c.cfg.analysis
    tasks = task_counts(cfg, cfg.data.tasks)
    ce = [TaskCount(t.name, 0, 0, _cap(t.test, a.cross_entropy_max_examples if t.name.startswith("bigbench:")
                                       else a.cross_entropy_max_examples_main), 0, t.candidates, t.shape)
          for t in tasks]
    c.score("teacher-student cross-entropy (Table 5)", "07", ["teacher", "student", "brd"], ce,
            per_candidate=a.cross_entropy_text == "candidates")
    probed = [TaskCount(t.name, 0, 0, _cap(t.train, a.probing_max_train) + _cap(t.tune, a.probing_max_eval)
                        + _cap(t.test, a.probing_max_eval), 0, 1, t.shape)
              for t in task_counts(cfg, probing_tasks(cfg))]
    c.score("hidden states for the probes (Figure 4)", "08", ["student", "brd"], probed, per_candidate=False)
    full, fixed = cfg.recipes.brd.max_steps, cfg.recipes.ablation.max_steps
    fractions = data_size_fractions(cfg)
    if a.data_size_steps == "epochs":  # steps: brd's x the share of passages (brdlib.data_size: of tokens)
        sizes = [f for f in fractions if f != 1]
        c.train("data-size students (Figure 2)", "09", "brd", ["student"] * len(sizes),
                steps=[max(1, round(full * f)) for f in sizes])
    else:
        sizes = [f for f in fractions if not (f == 1 and fixed == full)]
        c.train("data-size students (Figure 2)", "09", "ablation", ["student"] * len(sizes))
    c.score("data-size scoring (Figure 2)", "09", [f"brd_frac{f}" for f in sizes], tasks,
            cap=a.data_size_max_examples)


def count_work(cfg: Config) -> tuple[list[Work], dict[str, Rate]]:
    """Every stage's work for profile ``cfg`` as the notebooks run it (module docstring), and the rates behind the
    counts (answer and sentence lengths, characters per token, task shapes)."""
    c = Counter(cfg)
    _teacher_and_students(c)
    _blind(c)
    _protocols(c)
    _analyses(c)
    c.uses(Rate("multi-device scaling", 1.0, "x per device (linear)", "assumed",
                "work divides evenly across devices; no communication cost counted"))
    return c.works, c.rates


# Rates -----------------------------------------------------------------------------------------------------


def _gpu_check_mfu(dev: DeviceKind, path: Path | None = None) -> Rate | None:
    """The training MFU ``bench/gpu_check.sh`` measured on a GPU of this kind, where its output (default
    :data:`GPU_CHECK_JSON`) is present."""
    path = GPU_CHECK_JSON if path is None else path
    if not path.is_file() or not dev.device_name:
        return None
    report = json.loads(path.read_text())
    name = str(report.get("device", {}).get("device_name", ""))
    mfu = (report.get("training") or {}).get("mfu")
    other = [k.device_name for k in DEVICE_KINDS.values() if k.device_name and k.device_name != dev.device_name
             and k.device_name in name and dev.device_name in k.device_name]  # "A10" must not match an "A100"
    if not mfu or report.get("size") != "gpu" or dev.device_name not in name or other:
        return None
    return Rate("MFU of training", float(mfu), "of the bf16 peak", "measured",
                f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} on {name}: "
                f"an XGLM-564M-shaped student at 2 x 2,048 tokens")


def _cpu_rates() -> dict[WorkKind, Rate]:
    """FLOP/s of the committed smoke run on this project's 2-core CPU: its teacher and its BRD student."""
    runs, training = SMOKE_FIGURES / "01_teacher_run.csv", SMOKE_FIGURES / "03_training.csv"
    if not runs.is_file() or not training.is_file():
        raise PlanError(f"the cpu kind reads the smoke run's measured rates from {SMOKE_FIGURES}, which lacks "
                        f"01_teacher_run.csv or 03_training.csv; run ./run_all.sh smoke, or plan for a GPU kind")
    smoke = load_config("smoke")
    teacher, student = model_params(smoke.models.teacher)[0], model_params(smoke.models.student)[0]
    rows = _read_csv(runs)
    tokens_per_s = sum(float(r["tokens"]) for r in rows) / sum(float(r["seconds"]) for r in rows)
    brd = next(r for r in _read_csv(training) if r["student"] == "brd")
    per_token = 8 if smoke.recipe("brd").gradient_checkpointing else 6
    train = float(brd["tokens/s"]) * per_token * student
    where = f"the brd student's tokens/s x {per_token}·N of the smoke student (00_models.csv)"
    return {
        "generate": Rate("generate FLOP/s per cpu", 2 * teacher * tokens_per_s, "FLOP/s", "measured",
                         "figures/smoke/01_teacher_run.csv",
                         "generated tokens / seconds (llama.cpp, 2 threads) x 2·N of the smoke teacher "
                         "(00_models.csv)"),
        "train": Rate("train FLOP/s per cpu", train, "FLOP/s", "measured", "figures/smoke/03_training.csv", where),
        "score": Rate("score FLOP/s per cpu", train, "FLOP/s", "assumed", "= train FLOP/s (smoke 03_training.csv)",
                      "the measured training FLOP/s applied to forward passes: no scoring rate is committed"),
    }


def device_rates(kind: str) -> dict[WorkKind, Rate]:
    """FLOP/s per device of each kind of work on device ``kind`` (:data:`DEVICE_KINDS`), each labelled."""
    if kind not in DEVICE_KINDS:
        raise PlanError(f"unknown device kind {kind!r}; accepted: {', '.join(DEVICE_KINDS)}")
    dev = DEVICE_KINDS[kind]
    if dev.peak_bf16_flops is None:
        return _cpu_rates()
    measured = _gpu_check_mfu(dev)
    out: dict[WorkKind, Rate] = {}
    for work in WORK_KINDS:
        mfu = measured if work == "train" and measured else ASSUMED_MFU[work]
        out[work] = Rate(f"{work} FLOP/s per {kind}", dev.peak_bf16_flops * mfu.value, "FLOP/s", mfu.label,
                         f"datasheet {dev.peak_bf16_flops / 1e12:g} TFLOPS x MFU {mfu.value:.2f}",
                         f"MFU {mfu.label}: {mfu.source}")
    return out


def local_kind() -> str:
    """The :data:`DEVICE_KINDS` kind of this machine: its first CUDA GPU's (by name), else ``cpu``; a GPU of no
    known kind is refused, naming the kinds."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0)
    found = [k.name for k in DEVICE_KINDS.values() if k.device_name and k.device_name in name]
    if not found:
        raise PlanError(f"GPU {name!r} is none of the known kinds ({', '.join(DEVICE_KINDS)}): pass one")
    return max(found, key=lambda k: len(DEVICE_KINDS[k].device_name))  # "A100" over "A10"


# The plan --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of the plan: its work, the rate it runs at, and hours on the plan's devices."""

    work: Work
    rate: Rate
    hours: float


@dataclass
class Plan:
    """The work of every stage of a profile and its hours on ``gpus`` devices of ``kind``."""

    profile: str
    kind: DeviceKind
    gpus: int
    stages: list[Stage]
    rates: list[Rate]

    @property
    def total_hours(self) -> float:
        return sum(s.hours for s in self.stages)

    def table(self) -> pd.DataFrame:
        """One row per stage, and a total row: work, FLOPs, rate (value, label, source) and hours."""
        import pandas as pd

        rows = [{"stage": s.work.stage, "notebook": s.work.notebook, "kind": s.work.kind, "work": s.work.what,
                 "PFLOP": s.work.flops / 1e15, "rate (TFLOP/s per device)": s.rate.value / 1e12,
                 "rate label": s.rate.label, "rate source": s.rate.source, "hours": s.hours} for s in self.stages]
        rows.append({"stage": "total", "notebook": "", "kind": "", "work": "",
                     "PFLOP": sum(s.work.flops for s in self.stages) / 1e15, "rate (TFLOP/s per device)": math.nan,
                     "rate label": "", "rate source": f"{self.gpus} x {self.kind.name}, linear scaling assumed",
                     "hours": self.total_hours})
        return pd.DataFrame(rows)

    def render(self) -> str:
        """The plan as text: a header, the per-stage table with the total, and every rate and assumption."""

        table = self.table().drop(columns=["kind"]).rename(columns={"rate (TFLOP/s per device)": "TFLOP/s"})
        table["PFLOP"] = table["PFLOP"].map(lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3g}")
        table["TFLOP/s"] = table["TFLOP/s"].map(lambda v: "" if math.isnan(v) else f"{v:,.4g}")
        table["hours"] = table["hours"].map(lambda v: f"{v:,.2f}")
        numeric = {"PFLOP", "TFLOP/s", "hours"}
        widths = {c: max(len(c), *(len(str(v)) for v in table[c])) for c in table.columns}
        lines = ["  ".join(str(v).rjust(widths[c]) if c in numeric else str(v).ljust(widths[c])
                           for c, v in zip(table.columns, row, strict=True)).rstrip()
                 for row in [list(table.columns), *table.itertuples(index=False)]]
        body = "\n".join([lines[0], "-" * len(lines[0]), *lines[1:-1], "-" * len(lines[0]), lines[-1]])
        head = (f"brd plan {self.profile}: {self.gpus} x {self.kind.description} ({self.kind.name}); "
                f"total {self.total_hours:,.2f} h")
        rates = "\n".join(textwrap.fill(r.line(), 118, initial_indent="  - ", subsequent_indent="    ")
                          for r in self.rates)
        return (f"{head}\n{body}\n\nRates and assumptions (each measured or assumed, with its source):\n{rates}\n"
                f"  - device peak: {self.kind.source}\n"
                f"FLOPs: 2·N per token forward (generation, scoring), 6·N per token training (8·N with gradient "
                f"checkpointing), N = parameters; attention FLOPs, loading, tokenising and CPU work left out.")


def make_plan(cfg: Config, gpus: int = 1, kind: str = "a100") -> Plan:
    """The plan of profile ``cfg`` on ``gpus`` devices of ``kind`` (:data:`DEVICE_KINDS`); hours scale as 1/gpus."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise PlanError(f"gpus must be a positive whole number, got {gpus!r}")
    rates = device_rates(kind)
    works, used = count_work(cfg)
    stages = [Stage(w, rates[w.kind], w.flops / (rates[w.kind].value * gpus) / 3600) for w in works]
    return Plan(cfg.profile, DEVICE_KINDS[kind], gpus, stages, [*rates.values(), *used.values()])


def plan_table(cfg: Config, gpus: Sequence[int] = (1, 4, 8), kind: str = "a100") -> pd.DataFrame:
    """Hours of every stage of ``cfg`` on each number of devices in ``gpus`` (notebook 00), with the total."""
    import pandas as pd

    plans = {n: make_plan(cfg, n, kind) for n in gpus}
    first = plans[gpus[0]].table()
    out = pd.DataFrame({"stage": first["stage"], "notebook": first["notebook"], "rate label": first["rate label"]})
    for n, plan in plans.items():
        out[f"hours on {n} x {kind}"] = plan.table()["hours"].round(2)
    return out
