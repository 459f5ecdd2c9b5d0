"""Continued pretraining of the student on a passage variant (§3.2, A.1), with the transformers Trainer.

    from brdlib.train import train_student
    path = train_student(cfg, "brd", "brd")          # cfg.data_dir/students/brd; load_model(str(path)) loads it
    path = train_student(cfg, "ori", "further", recipe="further")   # the profile's recipes.further

Several GPUs (the paper used four A100s), or two CPU processes to check the DDP path; pack first, in one
process, so that no rank waits at a barrier while rank 0 tokenises D_TRAIN::

    brd train paper --variant brd --pack-only
    accelerate launch --config_file configs/accelerate/ddp_4gpu.yaml -m brdlib.cli train paper --variant brd --name brd
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m brdlib.cli train tiny --variant brd --name brd

What it does:

- **Packing.** Each passage is tokenized with the student's tokenizer and closed with eos
  (:func:`brdlib.assemble.encode_passages`); groups of ``train.pack_batch_passages`` passages are concatenated
  and cut into blocks of exactly the recipe's ``max_length`` tokens (``train.max_length`` unless the student's
  recipe, ``recipes.<name>``, sets its own; :meth:`brdlib.config.Config.recipe`). Only the last block of a group
  is padded, so every token is kept; the padding fraction is reported. Attention spans the passages of a block, as
  in the usual concatenated pretraining; eos marks the boundaries. The blocks are cached in
  ``cfg.data_dir/packed/<key>`` by :mod:`brdlib.packing` (key: data, tokenizer, block length, group size; written
  atomically), so ``--pack-only`` before ``accelerate launch`` does the tokenising once and the ranks only read it.
- **Lengths bounded by the model.** A block longer than the model's own maximum positions (GPT-2's
  ``n_positions``, ``max_position_embeddings`` elsewhere) is refused with an error naming the key, the model and
  its limit, before any data is packed (:func:`check_max_length`).
- **FSDP.** The finished student is always saved as a full state dict (a sharded one would leave no loadable
  model), and no summary is written beside a folder without weights.
- **Loss on real tokens only.** Padding positions carry label -100 and attention mask 0.
- **Chunked cross-entropy** for large vocabularies (``train.loss``; XGLM's 256k): the output layer and the
  cross-entropy run on chunks of ``train.loss_chunk_tokens`` tokens, each recomputed in the backward pass, so
  the full ``batch x length x vocabulary`` logits never exist. transformers 5 offers no such loss on CPU or for
  XGLM (Liger's fused kernel needs Triton and a supported architecture), hence :func:`chunked_causal_lm_loss`.
  It runs inside the model's forward (through the model's own ``loss_function`` hook), so DDP and FSDP see an
  ordinary forward; it is checked against the standard loss on the real model before training starts.
- **Recipes.** How long each kind of student trains, and at what batch, length and optimizer, is its named recipe
  (``recipes.brd``, ``further``, ``ablation``, ``task``, ``kd``, ``kd_brd``); :func:`train_model` is the one
  training path of all of them, the KD students of brdlib.kd included.
- **Batch.** ``train.batch_size`` is the global batch (the paper's 8), split over processes and
  ``gradient_accumulation_steps``; it must divide evenly.
- **Precision.** bf16 autocast on a GPU that supports it (``dtype: auto``), float32 on CPU; optional gradient
  checkpointing.
- **Checkpoints and resume.** A checkpoint every ``train.save_steps`` under ``cfg.data_dir/checkpoints/<name>``;
  a re-run after a kill resumes from the last complete one (model, optimizer, scheduler, RNG and data
  position), and gives the same weights as an uninterrupted run.
- **Idempotent.** The finished student (model + tokenizer + ``train_summary.json``) is written to
  ``cfg.data_dir/students/<name>`` under a temporary name and renamed into place; a later call with the same
  inputs (variant data, init, training keys) returns it without training.
- **Throughput.** tokens/s (real tokens) at each logging step, and MFU on a GPU whose peak is known.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.assemble import load_variant
from brdlib.config import load_config
from brdlib.models import (
    free_memory,
    load_model,
    max_positions,
    mmap_threshold,
)
from brdlib.packing import (
    IGNORE_INDEX,
    PackingStats,
    load_tokenizer,
    packed_blocks,
)
from brdlib.store import (
    SUMMARY_FILE,
    checkpoints_dir,
    ensure,
    is_trained,
    load_card,
    load_summary,
    register_builder,
    resolve_model,
    student_dir,
    swap_into_place,
)

if TYPE_CHECKING:
    import datasets
    import pandas as pd
    import torch
    from matplotlib.figure import Figure
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from brdlib.config import Config, TrainRecipe

__all__ = [
    "NAMED_STUDENTS", "PEAK_BF16_FLOPS", "TORCH_ADAFACTOR", "TRAIN_FORMAT_VERSION", "TrainError", "brd_trainer_class",
    "build_named_students", "check_chunked_loss", "check_max_length", "checkpointing_argument",
    "chunked_causal_lm_loss", "chunked_loss", "distributed_state", "final_checkpoint_callback", "flops_per_token",
    "fsdp_on_cpu", "has_weights", "is_up_to_date", "last_complete_checkpoint", "loss_curve_figure", "median",
    "optimizer_arguments", "pack_variant", "peak_flops", "peak_memory_mb", "per_device_batch", "resolve_recipe",
    "run_and_save", "settings_table", "train_model", "train_student", "training_arguments", "training_fingerprint",
    "training_summary", "training_table", "use_chunked_loss",
]

log = logging.getLogger(__name__)

TRAIN_FORMAT_VERSION = 1
"""Bump when training changes in a way that makes earlier students stale."""


class TrainError(ValueError):
    """A training request that cannot run: bad name, batch that does not divide, unverifiable loss."""


# Lengths bounded by the model ----------------------------------------------------------------------------------


def check_max_length(length: int, key: str, config: Any, model: str) -> None:
    """Refuse a block of ``length`` tokens longer than ``model`` allows, naming the config ``key``.

    An error rather than a silent clamp: the block length sets the tokens per step and where passages are cut,
    so the profile must state the length that is really trained (and the tables print it). Learned position
    tables (GPT-2) crash past their end; sinusoidal (XGLM) and rotary ones were never trained there.
    """
    limit = max_positions(config)
    if limit is not None and length > limit[0]:
        hint = (" (or set max_length in the recipe of these students: recipes.<name>.max_length)"
                if key == "train.max_length" else "")
        raise TrainError(f"{key}={length} is longer than model {model!r} allows: its config's {limit[1]}="
                         f"{limit[0]} positions; set {key} to at most {limit[0]}{hint}")


# Chunked cross-entropy -------------------------------------------------------------------------------------


def _chunk_ce_sum(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    import torch.nn.functional as F

    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_tokens: int = 1024,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal-LM cross-entropy from the final hidden states, ``chunk_tokens`` positions at a time.

    Same value and gradients as transformers' ``ForCausalLMLoss`` on ``hidden @ weight.T + bias``: labels shifted
    left, -100 ignored, mean over real targets (or sum / ``num_items_in_batch``). Each chunk's logits are
    recomputed in the backward pass (activation checkpointing), so memory holds one chunk's logits at a time.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    h = hidden.reshape(-1, hidden.shape[-1])
    y = shift_labels.reshape(-1).to(h.device)
    total = h.new_zeros((), dtype=torch.float32)
    for start in range(0, h.shape[0], chunk_tokens):
        y_chunk = y[start:start + chunk_tokens]
        if not bool((y_chunk != IGNORE_INDEX).any()):
            continue
        total = total + checkpoint(_chunk_ce_sum, h[start:start + chunk_tokens], y_chunk, weight, bias,
                                   use_reentrant=False)
    if num_items_in_batch is None:
        return total / (y != IGNORE_INDEX).sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


@contextlib.contextmanager
def chunked_loss(model: PreTrainedModel, chunk_tokens: int) -> Iterator[PreTrainedModel]:
    """Within the block, ``model(..., labels=...)`` computes its loss with :func:`chunked_causal_lm_loss`.

    The output layer's forward becomes the identity (the model hands its hidden states to ``loss_function``)
    and the model's ``loss_function`` applies the output layer chunk by chunk. The returned ``logits`` are then
    hidden states: use only for training. Weights and state dict are untouched; both are restored on exit.
    """
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise TrainError(f"{type(model).__name__} has no linear output layer; use train.loss=standard")
    if getattr(model.config, "final_logit_softcapping", None):
        raise TrainError(f"{type(model).__name__} soft-caps its logits; the chunked loss does not; "
                         "use train.loss=standard")

    def identity(hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def loss_function(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int | None = None,
                      num_items_in_batch: torch.Tensor | int | None = None, ignore_index: int = IGNORE_INDEX,
                      shift_labels: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        return chunked_causal_lm_loss(logits, labels, head.weight, getattr(head, "bias", None), chunk_tokens,
                                      num_items_in_batch, shift_labels)

    had_loss = "_loss_function" in model.__dict__
    previous = model.__dict__.get("_loss_function")
    head.forward = identity
    model.loss_function = loss_function
    try:
        yield model
    finally:
        del head.forward
        if had_loss:
            model.loss_function = previous
        else:
            del model._loss_function


def check_chunked_loss(model: PreTrainedModel, chunk_tokens: int, length: int = 24, tol: float = 1e-4) -> float:
    """Compare the chunked loss with the model's own on a small random batch; raise if they differ.

    Catches architectures that transform logits between the output layer and the loss. Returns the difference.
    """
    import torch

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, length), generator=gen).to(model.device)
    labels = ids.clone()
    labels[1, length // 2:] = IGNORE_INDEX
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss.float().item()
        with chunked_loss(model, chunk_tokens=max(1, min(chunk_tokens, length // 3))):
            got = model(input_ids=ids, labels=labels).loss.float().item()
    model.train(was_training)
    diff = abs(ref - got)
    if diff > tol * max(1.0, abs(ref)):
        raise TrainError(f"the chunked loss ({got:.6f}) differs from {type(model).__name__}'s own ({ref:.6f}); "
                         "use train.loss=standard for this model")
    return diff


def use_chunked_loss(cfg: Config, vocab_size: int) -> bool:
    """Whether ``train.loss`` asks for the chunked loss for a vocabulary of this size."""
    mode = cfg.train.loss
    return mode == "chunked" or (mode == "auto" and vocab_size >= cfg.train.chunked_loss_min_vocab)


# Throughput -------------------------------------------------------------------------------------------------

PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 125e12, "A10": 125e12, "V100": 125e12, "RTX 4090": 165e12, "B200": 2250e12,
}
"""Dense bf16 (fp16 for V100) peak per GPU, by a substring of the device name, most specific first."""


def peak_flops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, or None when unknown."""
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return flops
    return None


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·d·T for attention (PaLM appendix B; nanoGPT)."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


def brd_trainer_class() -> type:
    """The Trainer class every student trains with (brdlib.kd subclasses it with the KD loss)."""
    from transformers import Trainer

    class BRDTrainer(Trainer):
        """The Trainer, logging real tokens per second (and MFU on a known GPU) at each logging step."""

        flops_per_token: float = 0.0
        peak_flops_total: float | None = None
        _clock: tuple[float, int] | None = None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            now, seen = time.perf_counter(), self.state.num_input_tokens_seen
            if "loss" in logs:
                if self._clock is not None and now > self._clock[0]:
                    rate = (seen - self._clock[1]) / (now - self._clock[0])
                    logs["tokens_per_second"] = round(rate, 1)
                    if self.peak_flops_total:
                        logs["mfu"] = round(rate * self.flops_per_token / self.peak_flops_total, 4)
                self._clock = (now, seen)
            super().log(logs, start_time)

    return BRDTrainer


def final_checkpoint_callback() -> Any:
    """A Trainer callback that drops the Trainer's checkpoint at the last step, written just before the final model is
    saved (:func:`run_and_save`): brd never resumes from it (the steps are in the fingerprint, so a longer run starts
    its own checkpoints) and the student folder holds the same weights; a kill during the final save resumes from the
    previous checkpoint, as a kill between checkpoints does. The smoke run wrote ~20 such checkpoints (weights and
    optimizer states) only to delete them."""
    from transformers import TrainerCallback

    class SkipFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return SkipFinalCheckpoint()


# Checkpoints ----------------------------------------------------------------------------------------------

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(folder: Path, remove_partial: bool = False) -> Path | None:
    """The newest ``checkpoint-N`` holding ``trainer_state.json`` (the Trainer writes it last).

    Newer, incomplete ones (a kill while saving) are removed when ``remove_partial``.
    """
    if not folder.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))),
                   reverse=True)
    for _, path in found:
        if (path / "trainer_state.json").is_file():
            return path
        if remove_partial:
            log.warning("removing incomplete checkpoint %s (killed while saving)", path)
            shutil.rmtree(path)
    return None


# Training ---------------------------------------------------------------------------------------------------


def per_device_batch(batch_size: int, world_size: int, accumulation: int) -> int:
    """Blocks per process per micro-step for a global ``batch_size``; it must divide evenly."""
    if batch_size % (world_size * accumulation):
        raise TrainError(
            f"train.batch_size={batch_size} (the global batch) does not divide over {world_size} process(es) x "
            f"{accumulation} accumulation step(s); choose a multiple of {world_size * accumulation}"
        )
    return batch_size // (world_size * accumulation)


def checkpointing_argument(enabled: bool) -> dict[str, bool]:
    """TrainingArguments' gradient checkpointing switch: transformers 5.2x renamed ``gradient_checkpointing`` to
    ``activation_checkpointing``; whichever this version has."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": enabled}


TORCH_ADAFACTOR = "adafactor_torch"
"""``optim`` value for ``torch.optim.Adafactor`` stepping one parameter at a time (``foreach=False``): its step holds
one parameter's temporaries where transformers' ``adafactor`` holds three full-size copies of each in turn (the
0.5B student's untied 545 MB embedding: ~1.1 GB at the step). The Trainer has no name for it, so it goes in through
``optimizer_cls_and_kwargs``."""


def optimizer_arguments(optim: str, learning_rate: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(TrainingArguments kwargs, Trainer kwargs)`` for ``optim``: a Trainer optimizer name, or
    :data:`TORCH_ADAFACTOR`."""
    if optim != TORCH_ADAFACTOR:
        return {"optim": optim}, {}
    import torch

    return {}, {"optimizer_cls_and_kwargs": (torch.optim.Adafactor, {"lr": learning_rate, "foreach": False})}


def training_fingerprint(cfg: Config, t: TrainRecipe, variant_fingerprint: str, init_id: str) -> str:
    """Hash of what determines a student's weights (not logging, saving or checkpointing keys); ``t``: its
    resolved recipe (:meth:`brdlib.config.Config.recipe`)."""
    spec = {
        "v": TRAIN_FORMAT_VERSION, "variant": variant_fingerprint, "init": init_id, "steps": t.max_steps,
        "lr": t.learning_rate, "batch": t.batch_size, "len": t.max_length, "warmup": t.warmup_steps,
        "sched": t.lr_scheduler, "wd": t.weight_decay, "group": t.pack_batch_passages, "seed": cfg.seed,
    }
    if t.optim != "adamw_torch":  # the defaults leave earlier students' fingerprints as they were
        spec["optim"] = t.optim
    if cfg.resolved_dtype() != "float32":
        spec["mixed"] = cfg.resolved_dtype()
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def resolve_recipe(cfg: Config, recipe: str | TrainRecipe, max_steps: int | None = None) -> TrainRecipe:
    """``recipe`` resolved (a name: :meth:`brdlib.config.Config.recipe`), with ``max_steps`` in place of its steps
    where given."""
    t = cfg.recipe(recipe) if isinstance(recipe, str) else recipe
    return t.model_copy(update={"max_steps": max_steps}) if max_steps else t


def is_up_to_date(cfg: Config, name: str, fingerprint: str) -> bool:
    """Whether student ``name`` is finished and was trained from the inputs ``fingerprint`` hashes."""
    return is_trained(cfg, name) and load_summary(cfg, name).get("fingerprint") == fingerprint


def _ensure_variant(cfg: Config, variant: str) -> dict[str, Any]:
    ensure(cfg, f"passages/{variant}")
    return load_card(cfg, variant)


def run_and_save(trainer: Any, state: Any, model: Any, out: Path, resume: Path | None,
                 loss_context: Any = None) -> tuple[Any, float, Path, int, int]:
    """Train (resuming from ``resume``) and save the model to ``.<out>.tmp``; shared by students and KD students.

    Every process calls save_model (FSDP gathers the weights); the caller's main process writes the summary and
    swaps the folder into place. Returns (train result, seconds, temp folder, start step, start tokens).
    """
    start_step = start_tokens = 0
    if resume is not None:
        resumed = json.loads((resume / "trainer_state.json").read_text())
        start_step, start_tokens = resumed["global_step"], resumed.get("num_input_tokens_seen", 0)
    started = time.perf_counter()
    with loss_context if loss_context is not None else contextlib.nullcontext():
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    model.config.use_cache = True
    tmp = out.with_name(f".{out.name}.tmp")
    if state.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    state.wait_for_everyone()
    if getattr(trainer, "is_fsdp_enabled", False):
        # transformers 5.25's Trainer.save_model writes nothing unless the FSDP state-dict type is FULL_STATE_DICT
        # (checkpoints may stay sharded); gather the full weights, offloaded to the CPU, for the final save.
        plugin = trainer.accelerator.state.fsdp_plugin
        if "FULL_STATE_DICT" not in str(plugin.state_dict_type):
            plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(tmp))
    state.wait_for_everyone()
    if not has_weights(tmp):
        raise TrainError(f"training finished but no model weights were written to {tmp}; no summary is written "
                         "beside nothing (under FSDP the final save needs a full state dict)")
    state.wait_for_everyone()  # every process has looked before the main one moves the folder into place
    return result, seconds, tmp, start_step, start_tokens


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a saved model's weights (safetensors or torch, single file or sharded)."""
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    return any((folder / f).is_file() for f in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME,
                                                 WEIGHTS_INDEX_NAME))


def fsdp_on_cpu(device: str) -> None:
    """Let an FSDP launch (``accelerate launch`` with an FSDP config) shard on the CPU too.

    accelerate 1.16 turns an FSDP launch into FSDP only on accelerators (``AcceleratorState.__init__`` sets
    ``DistributedType.FSDP`` for MULTI_GPU-like types); on the CPU it silently trains with DDP, so the rehearsal of
    configs/accelerate/fsdp_4gpu.yaml (fsdp_cpu_2proc.yaml) would test nothing. torch's FSDP2 itself runs over
    gloo: when the launcher asks for FSDP and the profile's device is cpu, the FSDP plugin the Trainer builds is
    kept. Does nothing otherwise; idempotent.
    """
    if device != "cpu" or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__
    if getattr(init, "brd_fsdp_on_cpu", False):
        return

    def patched(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # as accelerate does on a GPU: both shared states say FSDP (later AcceleratorState() calls copy
            # PartialState's type)
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    patched.brd_fsdp_on_cpu = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = patched  # type: ignore[method-assign]


def distributed_state(cfg: Config) -> Any:
    """accelerate's process state for training, its process group waiting ``train.ddp_timeout`` seconds at a
    collective; on the CPU an FSDP launch shards (:func:`fsdp_on_cpu`)."""
    from datetime import timedelta

    from accelerate import PartialState

    device = cfg.resolved_device()
    fsdp_on_cpu(device)
    return PartialState(cpu=device == "cpu", timeout=timedelta(seconds=cfg.train.ddp_timeout))


def median(values: Sequence[float | None]) -> float | None:
    """The (upper) median of the values that are not None; None when there are none."""
    present = sorted(v for v in values if v is not None)
    return present[len(present) // 2] if present else None


def peak_memory_mb(device: str) -> tuple[float, str]:
    """(MB, what was measured): CUDA's max allocated on a GPU, else this process's max RSS."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda max allocated"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process max RSS"


def _pack_variant_blocks(cfg: Config, t: TrainRecipe, variant: str, card: dict[str, Any],
                         tokenizer: PreTrainedTokenizerBase) -> tuple[datasets.Dataset, PackingStats, Path]:

    return packed_blocks(cfg, f"variant:{variant}:{card['fingerprint']}", lambda: load_variant(cfg, variant),
                         tokenizer, t.max_length, t.pack_batch_passages)


def pack_variant(cfg: Config, variant: str, init: str | None = None,
                 recipe: str | TrainRecipe = "brd") -> tuple[Path, PackingStats]:
    """Pack passage variant ``variant`` at ``recipe``'s block length for training from ``init`` (default: the
    profile's student) into the cache that :func:`train_student` reads, in this one process, without loading any
    weights; run it before ``accelerate launch`` so that no rank waits at a barrier while rank 0 tokenises.
    Returns (cache folder, stats)."""
    card = _ensure_variant(cfg, variant)
    spec = resolve_model(cfg, init or cfg.models.student).spec
    _, stats, folder = _pack_variant_blocks(cfg, resolve_recipe(cfg, recipe), variant, card, load_tokenizer(spec))
    return folder, stats


def train_student(
    cfg: Config,
    variant: str,
    name: str,
    init: str | None = None,
    *,
    recipe: str | TrainRecipe = "brd",
    max_steps: int | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Continue-pretrain a student on passage variant ``variant`` and save it as ``students/<name>``.

    ``init``: a model spec, a directory or a trained student's name to start from (default: the profile's
    student). ``recipe``: a recipe name of the profile (``brd``, ``further``, ``ablation``, ``task``, ``kd_brd``) or
    a resolved one; ``max_steps`` replaces its steps. A finished student with the same inputs is returned at once
    (``force`` retrains); an unfinished one resumes from its last complete checkpoint (:func:`train_model`).
    """
    t = resolve_recipe(cfg, recipe, max_steps)
    state = distributed_state(cfg)  # before anything reads the process count
    with state.main_process_first():
        card = _ensure_variant(cfg, variant)
    ref = resolve_model(cfg, init or cfg.models.student)
    init_spec, init_id = ref.spec, ref.identity
    fingerprint = training_fingerprint(cfg, t, card["fingerprint"], init_id)
    if not force and is_up_to_date(cfg, name, fingerprint):
        log.info("student %s is up to date: %s", name, student_dir(cfg, name))
        return student_dir(cfg, name)

    def data(tokenizer: PreTrainedTokenizerBase) -> tuple[datasets.Dataset, PackingStats]:
        with state.main_process_first():  # a no-op wait when --pack-only ran before the launch
            return _pack_variant_blocks(cfg, t, variant, card, tokenizer)[:2]

    return train_model(cfg, t, name, init_spec, data, fingerprint, stamp={"variant": variant, "init": init_id},
                       summary_fields={"variant": variant, "variant_rows": card["rows"]}, callbacks=callbacks,
                       force=force, progress=progress)


def _fresh_checkpoints(state: Any, cfg: Config, name: str, stamp: dict[str, Any], force: bool) -> Path | None:
    """Remove ``name``'s checkpoints made from other inputs (or all, with ``force``) and incomplete ones, stamp
    the folder with ``stamp`` (its fingerprint and what it names); the checkpoint to resume from, if any."""
    ckpt = checkpoints_dir(cfg, name)
    marker = ckpt / "fingerprint.json"
    if state.is_main_process:
        stale = not marker.is_file() or json.loads(marker.read_text())["fingerprint"] != stamp["fingerprint"]
        if ckpt.exists() and (force or stale):
            log.warning("removing checkpoints of %s made from other inputs: %s", name, ckpt)
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(stamp))
        last_complete_checkpoint(ckpt, remove_partial=True)
    state.wait_for_everyone()
    return last_complete_checkpoint(ckpt)


def training_arguments(cfg: Config, t: TrainRecipe, name: str, world_size: int, *, progress: bool = True,
                       keep_columns: bool = False) -> tuple[Any, dict[str, Any]]:
    """``(TrainingArguments, Trainer kwargs)`` of a student trained with recipe ``t`` on ``world_size`` processes;
    ``keep_columns`` keeps the blocks' columns the model does not take (the KD trainer's ``index``)."""
    from transformers import TrainingArguments

    device, dtype = cfg.resolved_device(), cfg.resolved_dtype()
    per_device = per_device_batch(t.batch_size, world_size, t.gradient_accumulation_steps)
    optim_args, optimizer_kwargs = optimizer_arguments(t.optim, t.learning_rate)
    args = TrainingArguments(
        output_dir=str(checkpoints_dir(cfg, name)),
        max_steps=t.max_steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        **optim_args,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        bf16=dtype == "bfloat16",  # autocast; on a CPU too (smoke), fp32 master weights either way
        fp16=device == "cuda" and dtype == "float16",
        use_cpu=device == "cpu",
        **checkpointing_argument(t.gradient_checkpointing),
        ddp_timeout=t.ddp_timeout,
        seed=cfg.seed,
        data_seed=cfg.seed,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        **({"remove_unused_columns": False} if keep_columns else {}),
    )
    return args, optimizer_kwargs


def train_model(
    cfg: Config,
    recipe: str | TrainRecipe,
    name: str,
    init_spec: str,
    data: Callable[[PreTrainedTokenizerBase], tuple[datasets.Dataset, PackingStats]],
    fingerprint: str,
    *,
    stamp: dict[str, Any] | None = None,
    trainer_class: type | None = None,
    own_loss: bool = False,
    setup: Callable[[Any], None] | None = None,
    summary_fields: dict[str, Any] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train the model ``init_spec`` with ``recipe`` and save it as ``students/<name>``: the one training path of
    every student (BRD, FURTHER, ablations, protocol students, '+BRD' and the KD students of brdlib.kd).

    ``data(tokenizer)`` gives the packed blocks and their :class:`PackingStats`; ``fingerprint`` hashes the inputs
    (stale checkpoints, those of another fingerprint, are removed; ``stamp`` adds what the checkpoint folder's
    stamp names). ``trainer_class``: a subclass of :func:`brd_trainer_class`'s Trainer; with ``own_loss`` it
    computes its own loss from the blocks (their extra columns kept; no chunked loss, no MFU; the Trainer averages
    gradient accumulation). ``setup(trainer)`` runs before training; ``summary_fields`` join (or replace) the
    summary's. Resumes from the last complete checkpoint; the finished folder is swapped into place atomically.
    """
    import torch
    from transformers import default_data_collator

    t = resolve_recipe(cfg, recipe)
    state = distributed_state(cfg)
    resume = _fresh_checkpoints(state, cfg, name, {"fingerprint": fingerprint, **(stamp or {})}, force)
    loaded = load_model(init_spec, device="cpu", dtype="float32")  # fp32 master weights; autocast below
    model, tokenizer = loaded.model, loaded.tokenizer
    model.config.use_cache = False
    check_max_length(t.max_length, t.key("max_length"), model.config, init_spec)
    blocks, packing = data(tokenizer)
    args, optimizer_kwargs = training_arguments(cfg, t, name, state.num_processes, progress=progress,
                                                keep_columns=own_loss)
    trainer = (trainer_class or brd_trainer_class())(
        model=model, args=args, train_dataset=blocks, data_collator=default_data_collator,
        processing_class=tokenizer, callbacks=[*callbacks, final_checkpoint_callback()], **optimizer_kwargs,
    )
    if own_loss:
        trainer.model_accepts_loss_kwargs = False  # a per-batch mean: the Trainer averages accumulation steps
    elif cfg.resolved_device() == "cuda" and (args.bf16 or args.fp16) and peak_flops(torch.cuda.get_device_name()):
        trainer.peak_flops_total = peak_flops(torch.cuda.get_device_name()) * state.num_processes
        trainer.flops_per_token = flops_per_token(loaded.n_params, model.config.num_hidden_layers,
                                                  model.config.hidden_size, t.max_length)
    if setup is not None:
        setup(trainer)
    chunked = not own_loss and use_chunked_loss(cfg, model.config.vocab_size)
    if chunked:
        check_chunked_loss(model, t.loss_chunk_tokens)
    log.info("training %s (recipe %s) from %s: %d steps, %d blocks of %d, pad %.2f%%, resume=%s", name, t.recipe,
             init_spec, t.max_steps, packing.blocks, t.max_length, 100 * packing.pad_fraction, resume)
    out = student_dir(cfg, name)
    loss_context = chunked_loss(model, t.loss_chunk_tokens) if chunked else contextlib.nullcontext()
    with mmap_threshold(t.mmap_threshold_kib):
        result, seconds, tmp, start_step, start_tokens = run_and_save(trainer, state, model, out, resume, loss_context)
    if state.is_main_process:
        summary = {**training_summary(cfg, t, trainer, state, loaded, chunked, result, seconds, start_step,
                                      start_tokens), "name": name, "init": init_spec, "fingerprint": fingerprint,
                   "packing": packing.as_dict(), **(summary_fields or {})}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
        swap_into_place(tmp, out)
        if not t.keep_checkpoints:
            shutil.rmtree(checkpoints_dir(cfg, name), ignore_errors=True)
        log.info("student %s saved to %s (%.0f s)", name, out, seconds)
    state.wait_for_everyone()
    del trainer, model, loaded
    free_memory()  # the next model loads into this process's memory, not beside what glibc kept of this one
    return out


def training_summary(cfg: Config, t: TrainRecipe, trainer: Any, state: Any, loaded: Any, chunked: bool,
                     result: Any, seconds: float, start_step: int, start_tokens: int) -> dict[str, Any]:
    """The ``train_summary.json`` fields every student shares (:func:`train_model` adds name, data and init)."""
    device, args = cfg.resolved_device(), trainer.args
    history = [h for h in trainer.state.log_history if "loss" in h]
    session_tokens = trainer.state.num_input_tokens_seen - start_tokens
    peak_mb, peak_kind = peak_memory_mb(device)
    return {
        "profile": cfg.profile, "recipe": t.recipe, "student_spec": loaded.spec, "n_params": loaded.n_params,
        "steps": trainer.state.global_step, "max_steps": t.max_steps,
        "global_batch": t.batch_size, "per_device_batch": args.per_device_train_batch_size,
        "world_size": state.num_processes, "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": t.max_length, "learning_rate": t.learning_rate, "optim": t.optim,
        "epochs": round(trainer.state.epoch or 0.0, 3), "loss_mode": "chunked" if chunked else "standard",
        "device": device, "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        "gradient_checkpointing": t.gradient_checkpointing, "distributed_type": str(state.distributed_type.value),
        "resumed_from_step": start_step, "session_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(1, trainer.state.global_step - start_step), 2),
        "session_tokens": int(session_tokens),
        "tokens_per_second": round(session_tokens / seconds, 1) if seconds > 0 else None,
        "tokens_per_second_logged_median": median([h.get("tokens_per_second") for h in history]),
        "mfu_logged_median": median([h.get("mfu") for h in history]),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None,
        "train_loss_session_mean": result.training_loss,
        "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": peak_kind, "log_history": history,
    }


NAMED_STUDENTS: dict[str, tuple[str, str]] = {
    "brd": ("brd", "brd"), "further": ("ori", "further"),
    "brd_minus_sentdata": ("no_sent", "ablation"), "brd_sentence_level": ("sentence_level", "ablation"),
}
"""Students known by name (``brdlib.store.ensure(cfg, "students/<name>")``): name -> (passage variant, recipe).
``brd`` and ``further`` are notebook 03's; ``brd_minus_sentdata`` (Table 12's -SentData, A.6) and
``brd_sentence_level`` (Table 7) train with the ``ablation`` recipe."""


def build_named_students(cfg: Config, names: list[str], progress: bool = True) -> None:
    """The store's builder of ``students/<name>`` for :data:`NAMED_STUDENTS`: their passages first, then each
    student (reused when up to date, resumed when unfinished)."""
    unknown = [n for n in names if n not in NAMED_STUDENTS]
    if unknown:
        raise TrainError(f"no student is named {unknown[0]!r}; named students: {', '.join(NAMED_STUDENTS)} (train "
                         "any other with train_student)")
    ensure(cfg, *[f"passages/{NAMED_STUDENTS[n][0]}" for n in names], progress=progress)
    for name in names:
        variant, recipe = NAMED_STUDENTS[name]
        train_student(cfg, variant, name, recipe=recipe, progress=progress)


register_builder("students", build_named_students)


# Tables and figures for notebook 03 ---------------------------------------------------------------------------


def settings_table(cfg: Config) -> pd.DataFrame:
    """The profile's training settings beside the paper's (A.1; the steps of recipes brd and further, §4)."""
    import pandas as pd

    paper, ours = load_config("paper"), cfg
    rows = [(label, get(paper), get(ours)) for label, get in [
        ("learning rate", lambda c: c.train.learning_rate),
        ("global batch (blocks/step)", lambda c: c.train.batch_size),
        ("block length (tokens)", lambda c: c.train.max_length), ("steps, BRD", lambda c: c.recipes.brd.max_steps),
        ("steps, FURTHER", lambda c: c.recipes.further.max_steps),
        ("checkpoint every (steps)", lambda c: c.train.save_steps),
        ("tokens per step", lambda c: c.train.batch_size * c.train.max_length),
    ]]
    return pd.DataFrame(rows, columns=["setting", "paper", f"this profile ({cfg.profile})"])


def training_table(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per student: data, steps, packing, time, throughput and losses."""
    import pandas as pd

    return pd.DataFrame([{
        "student": s["name"], "variant": s["variant"], "init": Path(s["init"]).name if "/" in s["init"] else s["init"],
        "steps": s["steps"], "global batch": s["global_batch"], "block": s["max_length"],
        "blocks": s["packing"]["blocks"], "epochs": s["epochs"], "real tokens/epoch": s["packing"]["real_tokens"],
        "pad %": round(100 * s["packing"]["pad_fraction"], 2), "loss": s["loss_mode"],
        "processes": s["world_size"], "device": s["device"], "seconds": s["session_seconds"],
        "resumed from": s["resumed_from_step"], "tokens/s": s["tokens_per_second"],
        "MFU": s.get("mfu_logged_median"), "first loss": s["first_loss"], "final loss": s["final_loss"],
    } for s in summaries])


def loss_curve_figure(summaries: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Training loss against tokens seen, one line per student."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for s in summaries:
        hist = s["log_history"]
        ax.plot([h["num_input_tokens_seen"] / 1e3 for h in hist], [h["loss"] for h in hist], marker="o", ms=3,
                label=f"{s['name']} ({s['variant']}, {s['steps']} steps)")
    ax.set_xlabel("real tokens seen (thousands)")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(title or "Training loss", fontsize=11)
    ax.legend(fontsize=9)
    return fig
