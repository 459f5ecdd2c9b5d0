"""Token-level knowledge-distillation baselines (§4 blind test, Table 3's SKD/MiniLLM rows, Table 4).

    from brdlib.kd import ensure_kd_students, train_kd_student
    refs = ensure_kd_students(cfg)          # {"skd": ..., "minillm": ...} for brdlib.evaluate.evaluate_models
    path = train_kd_student(cfg, "skd")     # cfg.data_dir/students/skd (model, tokenizer, train_summary.json)
    brd kd tiny --kind minillm

The paper compares against the GPT-2 760M students released by Gu et al. (2023, MiniLLM): **SKD**, standard
token-level KD (forward KL from the teacher's next-token distribution), and **MiniLLM** (reverse KL). With
``kd.released`` set (the paper profile) those checkpoints are used as they are and nothing is trained. Otherwise
(tiny, smoke) :func:`train_kd_student` distils ``kd.teacher`` into ``kd.student`` on the profile's original
passages (D_ORI, the FURTHER student's text; no teacher behaviours), with the loss over the full next-token
distribution at every real position:

- ``skd``: forward KL(p_teacher || q_student), the standard KD of Hinton et al. (2015);
- ``minillm``: reverse KL(q_student || p_teacher) on the same fixed text. This is *MiniLLM-style*, not MiniLLM:
  Gu et al. optimise the sequence-level reverse KL by policy gradient on the student's own samples, which a
  CPU profile cannot afford; here only the direction of the divergence follows them.

Both distributions use temperature ``kd.temperature`` and the loss is multiplied by T² (Hinton et al.), so the
gradient scale does not depend on T; T=1 (the default) is the plain KL. Positions whose next token is padding are
masked, as in the causal-LM loss; the loss is the mean over the remaining positions.

The KL is written out in PyTorch (a few lines, :func:`kd_loss`) rather than taken from TRL: TRL's ``GKDTrainer``
(``trl.experimental.gkd`` in TRL 1.x) is an SFT trainer over prompt/completion data with on-policy generation, and
its ``generalized_jsd_loss`` (beta=0: forward KL, beta=1: reverse KL, no T² factor) would add a dependency for
one function; ``tests/test_kd.py`` compares against it when TRL is installed.

Teacher and student must share a vocabulary (the token -> id maps of their tokenizers are compared before any
weights load; a mismatch fails naming both models and their sizes). Logits are cut to the shared tokenizer's
size: some checkpoints pad their embedding matrix beyond the tokenizer (Qwen2.5: 151,936 rows), and those rows
are never a token of the text.

Training runs through brdlib.train's one training function (:func:`brdlib.train.train_model`, with the recipe
``recipes.kd``) in the transformers Trainer (``compute_loss`` replaced), with train.py's packing, tokens/s logging,
checkpoints every ``train.save_steps`` with resume, and the atomic save: the finished student is written as
``students/<name>`` with its tokenizer and a ``train_summary.json`` (same keys as brdlib.train's, so
:func:`brdlib.train.training_table` and :func:`brdlib.store.resolve_model` work on it) whose fingerprint of the
inputs makes a later call reuse it, or retrain it when the inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.assemble import build_rows, index_behaviours, resolve_sep, variant_spec
from brdlib.corpus import load_passages
from brdlib.models import free_memory, load_model
from brdlib.packing import IGNORE_INDEX, load_tokenizer, packed_blocks
from brdlib.records import KD_KINDS
from brdlib.store import StoreError, is_trained, load_summary, resolve_model, student_dir
from brdlib.train import brd_trainer_class, check_max_length, distributed_state, train_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from brdlib.config import Config
    from brdlib.models import LoadedModel

__all__ = [
    "KD_FORMAT_VERSION", "KDError", "KDPlan", "TeacherLogits", "ensure_kd_students", "is_current", "kd_blocks",
    "kd_fingerprint", "kd_loss", "kd_model_spec", "kd_texts", "load_teacher", "next_token_mask", "plan_kd_student",
    "precompute_teacher_logits", "shared_vocabulary_size", "train_kd_student",
]

log = logging.getLogger(__name__)

KD_FORMAT_VERSION = 2  # 2: trains on a seeded sample of max_steps x batch_size blocks of recipes.kd (kd_blocks)
"""Bump when KD training changes in a way that makes earlier KD students stale."""


class KDError(ValueError):
    """A KD request that cannot run: unknown kind or model, or teacher and student without a shared vocabulary."""


def _check_kind(kind: str) -> str:
    if kind not in KD_KINDS:
        raise KDError(f"unknown KD kind {kind!r}; accepted: {', '.join(KD_KINDS)}")
    return kind


# The loss ------------------------------------------------------------------------------------------------------


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    kind: str,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean token-level KL between teacher and student next-token distributions over the positions in ``mask``.

    ``student_logits`` and ``teacher_logits``: (..., vocabulary), aligned position by position; ``mask``: bool of
    the leading shape, True where the loss counts. ``kind='skd'``: KL(p_t || q_s); ``'minillm'``: KL(q_s || p_t).
    Both are computed at temperature T and multiplied by T². With no position in the mask the loss is 0 (with a
    gradient of zeros).
    """
    import torch.nn.functional as F

    _check_kind(kind)
    if student_logits.shape != teacher_logits.shape:
        raise KDError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                      f"{tuple(teacher_logits.shape)} differ in shape; cut both to the shared vocabulary first")
    if mask.shape != student_logits.shape[:-1]:
        raise KDError(f"mask {tuple(mask.shape)} does not match the logits' positions "
                      f"{tuple(student_logits.shape[:-1])}")
    if temperature <= 0:
        raise KDError(f"temperature must be positive, got {temperature}")
    if not bool(mask.any()):
        return student_logits.sum() * 0.0
    log_q = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)   # (N, V): only real positions
    log_p = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1).detach()
    if kind == "skd":
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    else:
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return kl.mean() * temperature**2


def next_token_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions 0..L-2 whose next token is real (label not -100): where a next-token distribution is trained."""

    return labels[..., 1:] != IGNORE_INDEX


# Models and data ---------------------------------------------------------------------------------------------


def kd_model_spec(cfg: Config, ref: str, key: str) -> tuple[str, str]:
    """The spec (or directory) of ``ref`` — a role of ``cfg.models``, a trained student's name or a spec — and its
    identity for the fingerprint. ``key`` names the config key in errors (kd.teacher, kd.student)."""
    try:
        ref_ = resolve_model(cfg, ref)
    except StoreError as err:
        raise KDError(f"{key}={ref!r}: {err}") from None
    return ref_.spec, ref_.identity


def shared_vocabulary_size(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase,
                           teacher_name: str, student_name: str) -> int:
    """The size of the vocabulary teacher and student share; fails unless their token -> id maps are identical."""
    t_vocab, s_vocab = teacher.get_vocab(), student.get_vocab()
    if t_vocab != s_vocab:
        differ = sum(s_vocab.get(tok) != i for tok, i in t_vocab.items()) + len(set(s_vocab) - set(t_vocab))
        raise KDError(
            f"token-level KD needs a teacher and student with one vocabulary, but teacher {teacher_name!r} has "
            f"{len(t_vocab):,} tokens and student {student_name!r} has {len(s_vocab):,} ({differ:,} tokens differ "
            "in id or presence); choose kd.teacher/kd.student with the same tokenizer (e.g. the Qwen2.5 family)"
        )
    return len(t_vocab)


def kd_texts(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The profile's original passages (D_ORI, as :mod:`brdlib.assemble` writes them, in its seeded order).

    Built from the corpus directly (no teacher behaviours needed, nothing written): the same texts as the ``ori``
    variant's.
    """

    passages = load_passages(cfg, progress=False)
    sep = resolve_sep(cfg.passages.sep, tokenizer)
    rows, _ = build_rows(passages, index_behaviours([], passages), variant_spec("ori"), sep, cfg.seed)
    if not rows:
        raise KDError(f"profile {cfg.profile!r} has no corpus passages to distil on")
    return [r["text"] for r in rows]


def _teacher_dtype(cfg: Config) -> str:
    return cfg.resolved_dtype() if cfg.kd.teacher_dtype == "auto" else cfg.kd.teacher_dtype


@dataclass
class KDPlan:
    """What a KD student is made of, resolved without loading any weights."""

    kind: str
    name: str
    teacher_spec: str
    student_spec: str
    vocab_size: int
    texts: list[str]
    fingerprint: str
    tokenizer: PreTrainedTokenizerBase


def kd_fingerprint(cfg: Config, kind: str, teacher_id: str, student_id: str, texts: Sequence[str]) -> str:
    """Hash of what determines a KD student's weights (not logging, saving or checkpointing keys)."""
    t = cfg.recipe("kd")
    data = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    spec = {
        "v": KD_FORMAT_VERSION, "kind": kind, "teacher": teacher_id, "student": student_id, "data": data,
        "steps": t.max_steps, "batch": t.batch_size, "len": t.max_length, "lr": t.learning_rate,
        "T": cfg.kd.temperature, "teacher_dtype": _teacher_dtype(cfg), "optim": t.optim, "warmup": t.warmup_steps,
        "sched": t.lr_scheduler, "wd": t.weight_decay, "group": t.pack_batch_passages, "seed": cfg.seed,
    }
    if cfg.resolved_dtype() != "float32":
        spec["mixed"] = cfg.resolved_dtype()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def plan_kd_student(cfg: Config, kind: str, name: str | None = None) -> KDPlan:
    """Resolve teacher, student, data and fingerprint of a KD student; check the shared vocabulary."""

    _check_kind(kind)
    name = name or kind
    student_dir(cfg, name)  # checks the name
    teacher_spec, teacher_id = kd_model_spec(cfg, cfg.kd.teacher, "kd.teacher")
    student_spec, student_id = kd_model_spec(cfg, cfg.kd.student, "kd.student")
    tokenizer = load_tokenizer(student_spec)
    vocab = shared_vocabulary_size(load_tokenizer(teacher_spec), tokenizer, teacher_spec, student_spec)
    texts = kd_texts(cfg, tokenizer)
    return KDPlan(kind, name, teacher_spec, student_spec, vocab, texts,
                  kd_fingerprint(cfg, kind, teacher_id, student_id, texts), tokenizer)


def is_current(cfg: Config, plan: KDPlan) -> bool:
    """Whether a finished KD student of these inputs exists."""

    return is_trained(cfg, plan.name) and load_summary(cfg, plan.name).get("fingerprint") == plan.fingerprint


def load_teacher(cfg: Config, plan: KDPlan) -> LoadedModel:
    """The frozen KD teacher on the training device, in ``kd.teacher_dtype``."""

    loaded = load_model(plan.teacher_spec, device=cfg.resolved_device(), dtype=_teacher_dtype(cfg))
    loaded.model.eval()
    loaded.model.requires_grad_(False)
    return loaded


# Training ------------------------------------------------------------------------------------------------------


@dataclass
class TeacherLogits:
    """The frozen teacher's logits on every block a KD student trains on (``kd.teacher_logits: precomputed``),
    ``[blocks, length, shared vocabulary]`` in the teacher's dtype, row ``i`` for the block whose ``index`` is i."""

    logits: torch.Tensor
    n_params: int
    dtype: str


def kd_blocks(cfg: Config, plan: KDPlan) -> tuple[Any, Any]:
    """The packed blocks a KD student trains on and the packing summary: a seeded sample of ``recipes.kd``'s
    ``max_steps x batch_size`` blocks of D_ORI (all of them, shuffled, when there are fewer: the Trainer then runs
    epochs), each with its ``index`` (its row in :class:`TeacherLogits`). Both KD kinds train on the same blocks."""
    import datasets

    t = cfg.recipe("kd")
    data_id = "kd-texts:" + hashlib.sha256("\x00".join(plan.texts).encode()).hexdigest()[:16]
    with distributed_state(cfg).main_process_first():
        blocks, packing, _ = packed_blocks(cfg, data_id, lambda: datasets.Dataset.from_dict({"text": plan.texts}),
                                           plan.tokenizer, t.max_length, t.pack_batch_passages)
    n = min(len(blocks), t.max_steps * t.batch_size)
    sample = blocks.shuffle(seed=cfg.seed).select(range(n))
    return sample.add_column("index", list(range(n))), packing


def precompute_teacher_logits(cfg: Config, plan: KDPlan, blocks: Any, progress: bool = True) -> TeacherLogits:
    """Load the teacher, run it once over ``blocks`` (one block per forward, as the online teacher reads them, so the
    logits are the same bits), and free it before any student loads: the peak holds the teacher or the student."""
    import torch
    from tqdm.auto import tqdm

    teacher = load_teacher(cfg, plan)
    t = cfg.recipe("kd")
    check_max_length(t.max_length, t.key("max_length"), teacher.model.config, plan.teacher_spec)
    rows = []
    with torch.inference_mode():
        for i in tqdm(range(len(blocks)), desc="teacher logits", unit="block", disable=not progress):
            ids = torch.tensor([blocks[i]["input_ids"]], device=teacher.model.device)
            mask = torch.tensor([blocks[i]["attention_mask"]], device=teacher.model.device)
            rows.append(teacher.model(input_ids=ids, attention_mask=mask).logits[0, :, : plan.vocab_size].cpu())
    out = TeacherLogits(torch.stack(rows), teacher.n_params, teacher.dtype)
    del teacher, rows
    free_memory()
    return out


def _make_kd_trainer_class() -> type:
    import torch

    class KDTrainer(brd_trainer_class()):
        """brdlib.train's Trainer (tokens/s logging) with the KD loss against a frozen teacher."""

        kd_teacher: torch.nn.Module | None = None
        kd_logits: torch.Tensor | None = None  # precomputed: row i is the teacher on the block of index i
        kd_kind: str = "skd"
        kd_temperature: float = 1.0
        kd_vocab: int = 0

        def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                         num_items_in_batch: torch.Tensor | int | None = None) -> Any:
            ids, attention = inputs["input_ids"], inputs["attention_mask"]
            outputs = model(input_ids=ids, attention_mask=attention)
            if self.kd_logits is not None:
                teacher_logits = self.kd_logits[inputs["index"].cpu()].to(ids.device)
            else:
                with torch.no_grad():
                    teacher_logits = self.kd_teacher(input_ids=ids, attention_mask=attention).logits
            v = self.kd_vocab
            for who, logits in (("student", outputs.logits), ("teacher", teacher_logits)):
                if logits.shape[-1] < v:
                    raise KDError(f"the {who}'s logits have {logits.shape[-1]} entries, fewer than the shared "
                                  f"vocabulary's {v} tokens")
            loss = kd_loss(outputs.logits[:, :-1, :v], teacher_logits[:, :-1, :v],
                           next_token_mask(inputs["labels"]), self.kd_kind, self.kd_temperature)
            return (loss, outputs) if return_outputs else loss

    return KDTrainer


def train_kd_student(
    cfg: Config,
    kind: str,
    name: str | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    teacher: LoadedModel | None = None,
    teacher_logits: TeacherLogits | None = None,
    plan: KDPlan | None = None,
) -> Path:
    """Distil ``kd.teacher`` into ``kd.student`` with the ``kind`` loss (:data:`KD_KINDS`); save ``students/<name>``.

    ``name`` defaults to ``kind``. What is KD's own is prepared here (the plan, the blocks, the teacher or its
    logits, the trainer's loss); the training itself, with ``recipes.kd``, is :func:`brdlib.train.train_model`'s:
    a finished student of the same inputs is returned at once (``force`` retrains), an unfinished one resumes from
    its last complete checkpoint. ``teacher`` (``kd.teacher_logits: online``) or ``teacher_logits``
    (``precomputed``): what :func:`ensure_kd_students` made once for both kinds; ``plan``: this student's
    :func:`plan_kd_student`, when the caller has it already.
    """
    plan = plan or plan_kd_student(cfg, kind, name)
    t = cfg.recipe("kd")
    if not force and is_current(cfg, plan):
        log.info("KD student %s is up to date: %s", plan.name, student_dir(cfg, plan.name))
        return student_dir(cfg, plan.name)
    blocks, packing = kd_blocks(cfg, plan)
    if cfg.kd.teacher_logits == "precomputed":  # the teacher comes and goes before the student loads
        teacher_logits = teacher_logits or precompute_teacher_logits(cfg, plan, blocks, progress)
        teacher_n_params, teacher_dtype = teacher_logits.n_params, teacher_logits.dtype
    else:
        teacher = teacher or load_teacher(cfg, plan)
        check_max_length(t.max_length, t.key("max_length"), teacher.model.config, plan.teacher_spec)
        teacher_n_params, teacher_dtype = teacher.n_params, teacher.dtype

    def setup(trainer: Any) -> None:
        if teacher_logits is not None:
            trainer.kd_logits = teacher_logits.logits
        else:
            trainer.kd_teacher = teacher.model.to(trainer.args.device)
        trainer.kd_kind, trainer.kd_temperature, trainer.kd_vocab = kind, cfg.kd.temperature, plan.vocab_size

    summary = {
        "kind": kind, "kind_description": KD_KINDS[kind], "variant": "ori (KD)", "teacher": plan.teacher_spec,
        "teacher_n_params": teacher_n_params, "teacher_dtype": teacher_dtype, "vocab_size": plan.vocab_size,
        "teacher_logits": cfg.kd.teacher_logits, "blocks_trained_on": len(blocks), "temperature": cfg.kd.temperature,
        "loss_mode": f"{kind}: {'forward' if kind == 'skd' else 'reverse'} KL, T={cfg.kd.temperature:g}",
    }
    return train_model(cfg, t, plan.name, plan.student_spec, lambda _tokenizer: (blocks, packing), plan.fingerprint,
                       stamp={"kind": kind, "teacher": plan.teacher_spec, "student": plan.student_spec},
                       trainer_class=_make_kd_trainer_class(), own_loss=True, setup=setup, summary_fields=summary,
                       force=force, progress=progress)


def ensure_kd_students(cfg: Config, *, progress: bool = True) -> dict[str, str]:
    """``kind -> model reference`` of both KD baselines, for :func:`brdlib.evaluate.evaluate_models`.

    With ``kd.released`` (paper profile) the released checkpoints are returned as they are. Otherwise each kind's
    student is trained when missing or stale (the teacher is loaded once for both) and its name is returned
    (:func:`brdlib.store.resolve_model` finds ``students/<kind>``).
    """
    if cfg.kd.released:
        return {kind: cfg.kd.released[kind] for kind in KD_KINDS}
    teacher: LoadedModel | None = None
    logits: TeacherLogits | None = None
    refs: dict[str, str] = {}
    for kind in KD_KINDS:
        plan = plan_kd_student(cfg, kind)
        if not is_current(cfg, plan):
            if cfg.kd.teacher_logits == "precomputed":
                logits = logits or precompute_teacher_logits(cfg, plan, kd_blocks(cfg, plan)[0], progress)
            else:
                teacher = teacher or load_teacher(cfg, plan)
            train_kd_student(cfg, kind, progress=progress, teacher=teacher, teacher_logits=logits, plan=plan)
        refs[kind] = plan.name
    del teacher, logits
    free_memory()  # the teacher's memory, before the notebook loads the next model
    return refs
