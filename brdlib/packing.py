"""Tokenised passages packed into fixed-length training blocks, cached under ``data/<profile>/packed/<key>``.

    from brdlib.packing import packed_blocks
    blocks, stats, folder = packed_blocks(cfg, data_id, lambda: dataset, tokenizer, block_size=2048, group=2000)

Passages are closed by the tokenizer's end-of-text token, concatenated ``group`` at a time and cut into blocks of
``block_size`` tokens; only the last block of each group is padded (``attention_mask`` 0, label -100), so every
real token is trained on exactly once and in order. The cache is keyed by the data, the tokenizer's whole pipeline,
the block length and the group size, and written under a temporary name then renamed, so a killed run leaves none
half-written and the processes of a distributed run read one copy (``brd train PROFILE --pack-only`` first).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.assemble import encode_passages
from brdlib.embedded import tokenizer_dir
from brdlib.models import pretrained_tokenizer, resolve_spec, tiny_tokenizer
from brdlib.store import artefact_dir

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from brdlib.config import Config

__all__ = [
    "IGNORE_INDEX", "PACK_FORMAT_VERSION", "PACK_STATS_FILE", "PACKED_FILE", "PackingError", "PackingStats",
    "load_tokenizer", "pack_dataset", "pack_sequences", "packed_blocks", "packed_dir", "tokenizer_fingerprint",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""The label of a position the loss skips (padding), as transformers' losses read it."""


class PackingError(ValueError):
    """Passages that cannot be packed: an empty dataset, a block size that is not positive, no pad token."""


@dataclass
class PackingStats:
    """How the passages filled the blocks."""

    passages: int
    blocks: int
    block_size: int
    real_tokens: int

    @property
    def pad_tokens(self) -> int:
        return self.blocks * self.block_size - self.real_tokens

    @property
    def pad_fraction(self) -> float:
        return self.pad_tokens / (self.blocks * self.block_size) if self.blocks else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pad_tokens": self.pad_tokens, "pad_fraction": round(self.pad_fraction, 5)}


def pack_sequences(sequences: Sequence[Sequence[int]], block_size: int, pad_id: int) -> dict[str, list[list[int]]]:
    """Concatenate token sequences and cut them into blocks of ``block_size``; pad only the last block.

    Returns ``input_ids``, ``attention_mask`` (0 on padding) and ``labels`` (the ids, -100 on padding): every
    input token appears exactly once, in order, with attention 1.
    """
    if block_size <= 0:
        raise PackingError(f"block size must be positive, got {block_size}")
    flat = [t for seq in sequences for t in seq]
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for start in range(0, len(flat), block_size):
        block = flat[start:start + block_size]
        pad = block_size - len(block)
        out["input_ids"].append(block + [pad_id] * pad)
        out["attention_mask"].append([1] * len(block) + [0] * pad)
        out["labels"].append(block + [IGNORE_INDEX] * pad)
    return out


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise PackingError(f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token")
    return int(pad)


def pack_dataset(
    passages: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    group_passages: int,
    cache_file: Path | None = None,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, PackingStats]:
    """Tokenize the ``text`` column and pack it into blocks (:func:`pack_sequences`, per group of passages).

    With ``cache_file`` the packed blocks are written there once and reused (e.g. after a kill).
    """
    import datasets

    if len(passages) == 0:
        raise PackingError("the passage dataset is empty: nothing to train on")
    pad_id = _pad_id(tokenizer)

    def pack(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        packed = pack_sequences(encode_passages(tokenizer, batch["text"]), block_size, pad_id)
        packed["n_real"] = [sum(m) for m in packed["attention_mask"]]
        return packed

    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "attention_mask": datasets.Sequence(datasets.Value("int8")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "n_real": datasets.Value("int32"),
    })
    kwargs: dict[str, Any] = {}
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"cache_file_name": str(cache_file), "load_from_cache_file": True,
                  "new_fingerprint": cache_file.stem}
    else:
        kwargs = {"keep_in_memory": True}
    packed = passages.map(
        pack, batched=True, batch_size=group_passages, remove_columns=passages.column_names, features=features,
        num_proc=num_proc, desc=f"packing into blocks of {block_size}", **kwargs,
    )
    stats = PackingStats(len(passages), len(packed), block_size, int(sum(packed["n_real"])))
    return packed.remove_columns("n_real"), stats


PACK_FORMAT_VERSION = 1
"""Bump when packing changes in a way that makes cached blocks stale."""
PACKED_FILE = "blocks.arrow"
PACK_STATS_FILE = "packing.json"


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """A model's tokenizer without its weights (tiny-random, embedded, directory or hub id), with the pad token
    :func:`brdlib.models.load_model` gives it (eos when it has none), so both hash alike."""

    resolved = resolve_spec(spec)
    if resolved.kind == "tiny-random":
        return tiny_tokenizer()
    if resolved.kind == "embedded":

        return pretrained_tokenizer(str(tokenizer_dir(resolved.source)))
    return pretrained_tokenizer(resolved.source)  # the pad token set as load_model sets it


_PIPELINE_DIGESTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _pipeline_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the tokenizer's pipeline (tokenizer.json less its truncation/padding state, or the vocabulary), once
    per tokenizer object: serialising Qwen's took ~0.3 s, and the shared tokenizers of a run are asked ~40 times."""
    if tokenizer in _PIPELINE_DIGESTS:
        return _PIPELINE_DIGESTS[tokenizer]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline: Any = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        pipeline = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(pipeline, sort_keys=True, default=str).encode()).hexdigest()
    _PIPELINE_DIGESTS[tokenizer] = digest
    return digest


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides how a tokenizer encodes: its class, pipeline (tokenizer.json without the truncation/padding
    state that encoding calls change), special tokens and bos/eos flags; plus the source of the encoder used."""
    pipeline = _pipeline_digest(tokenizer)
    try:
        encoder = inspect.getsource(encode_passages) + inspect.getsource(pack_sequences)
    except (OSError, TypeError):
        encoder = f"{encode_passages.__module__}.{encode_passages.__qualname__}"
    spec = {"class": type(tokenizer).__name__, "pipeline": pipeline, "special": tokenizer.special_tokens_map,
            "flags": {k: getattr(tokenizer, k, None) for k in ("add_bos_token", "add_eos_token")},
            "encoder": hashlib.sha256(encoder.encode()).hexdigest()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def packed_dir(cfg: Config, data_id: str, tokenizer: PreTrainedTokenizerBase, block_size: int, group: int) -> Path:
    """Where the packed blocks of these inputs are cached: ``cfg.data_dir/packed/<key>``."""
    spec = {"v": PACK_FORMAT_VERSION, "data": data_id, "tokenizer": tokenizer_fingerprint(tokenizer),
            "block": block_size, "group": group}
    return artefact_dir(cfg, "packed") / hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def packed_blocks(
    cfg: Config,
    data_id: str,
    passages: Callable[[], datasets.Dataset],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    group: int,
) -> tuple[datasets.Dataset, PackingStats, Path]:
    """The packed blocks of ``passages()`` (a dataset with a ``text`` column, identified by ``data_id``), from
    the cache when present; otherwise packed (:func:`pack_dataset`), written under a temporary name and renamed
    into place, so a killed run leaves no half-written cache. The blocks are memory-mapped, not loaded.

    Returns (blocks, stats, cache folder)."""
    import datasets

    folder = packed_dir(cfg, data_id, tokenizer, block_size, group)
    if (folder / PACK_STATS_FILE).is_file():
        log.info("reusing packed blocks %s", folder)
    else:
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        _, stats = pack_dataset(passages(), tokenizer, block_size, group, cache_file=tmp / PACKED_FILE)
        (tmp / PACK_STATS_FILE).write_text(json.dumps({**asdict(stats), "data": data_id}, indent=1))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same packing first
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("packed %d blocks of %d into %s", stats.blocks, block_size, folder)
    saved = json.loads((folder / PACK_STATS_FILE).read_text())
    stats = PackingStats(**{k: saved[k] for k in ("passages", "blocks", "block_size", "real_tokens")})
    blocks = datasets.Dataset.from_file(str(folder / PACKED_FILE)).remove_columns("n_real")
    return blocks, stats, folder
