"""The teacher's basic-reading behaviours: NER and question raising and answering on every sentence.

    from brdlib.teacher import run_teacher, load_behaviours
    stats = run_teacher(cfg, passages)          # resumable; generates only what is missing
    records = load_behaviours(cfg)              # every record of every shard and behaviour

Outputs are JSONL shards under :func:`teacher_output_dir`, one file per (behaviour, shard), written a
batch at a time and fsynced. Each record is keyed by a hash of (model, prompt template, decoding
parameters, sentence); a sentence that occurs twice is generated once. A killed run restarts where it
stopped: finished records are read back and skipped, a torn last line is discarded and regenerated,
and a partly finished batch is regenerated whole so the batches are those of an uninterrupted run (with
transformers, hence its texts too; llama.cpp's texts also depend on the batches its server ran before,
see :mod:`brdlib.backends`). vLLM is fed a stream instead (every missing prompt; each record written as it finishes,
fsynced ``batch_size`` at a time): a resumed vLLM run asks only for the records not on disk.
``shard=i/N`` (``teacher.shard``) gives machine ``i`` the passages whose id hashes to
``i`` mod ``N``; copying the shard files of all machines into one directory gives the whole corpus.
A manifest per shard records the model, backend, parameters, counts and wall time of each run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import re
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brdlib.backends import Backend, DecodingParams, Generation, make_backend
from brdlib.corpus import load_passages
from brdlib.prompts import (
    DROP_REASONS,
    PAPER_INPUT,
    PAPER_RESPONSES,
    PromptTemplate,
    clean_response,
    get_template,
    normalize_input,
)
from brdlib.records import BEHAVIOURS, BehaviourRecord, Passage, TeacherItem, parse_shard
from brdlib.store import artefact_dir, register_builder

if TYPE_CHECKING:
    import pandas as pd

    from brdlib.config import Config

__all__ = [
    "RECORD_FORMAT", "STREAM_BLOCK", "BehaviourPlan", "BehaviourStats", "EngineRun", "RunStats", "ShardWriter",
    "build_teacher_records", "count_generations", "cut_batches", "decoding_params", "drop_table",
    "generate_behaviours", "items_from_passages", "items_from_texts", "iter_rows", "load_behaviours", "make_row",
    "manifest_path", "outcome_figure", "plan_behaviour", "read_manifest", "read_manifests", "read_rows", "record_key",
    "register_engine", "row_ident", "row_to_record", "rows_for", "run_teacher", "sample_table", "select_shard",
    "shard_file", "shard_of", "teacher_engine", "teacher_fingerprint", "teacher_output_dir", "write_manifest",
]

RECORD_FORMAT = 1
STREAM_BLOCK = 50_000
"""Prompts per call of a streaming backend (vLLM): so many that a block's tail (its slowest completion, at most
``max_new_tokens`` decoding steps) is a small part of its time, few enough to render and send (~100 MB)."""


def items_from_passages(passages: Iterable[Passage]) -> list[TeacherItem]:
    """Every sentence of every passage, in order (blank sentences skipped)."""
    return [TeacherItem(p.passage_id, i, s) for p in passages for i, s in enumerate(p.sentences) if s.strip()]


def items_from_texts(texts: Iterable[str], ids: Iterable[str] | None = None) -> list[TeacherItem]:
    """Downstream task inputs as items (relaxed protocol): one item per text, ``sentence_index`` 0."""
    texts = list(texts)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(texts))]
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
    return [TeacherItem(i, 0, t) for i, t in zip(ids, texts, strict=True) if t.strip()]


# Shards and keys ----------------------------------------------------------------------------------

def shard_of(passage_id: str, n_shards: int) -> int:
    """The shard a passage belongs to: a stable hash of its id mod N (all its sentences go together)."""
    return int.from_bytes(hashlib.sha256(passage_id.encode()).digest()[:8], "big") % n_shards


def select_shard(items: Iterable[TeacherItem], shard: str | tuple[int, int]) -> list[TeacherItem]:
    """The items whose passage falls in ``shard``."""
    i, n = parse_shard(shard)
    return [it for it in items if n == 1 or shard_of(it.passage_id, n) == i]


def record_key(model: str, template: PromptTemplate, params: DecodingParams, sentence: str) -> str:
    """Hash of (model, prompt template, decoding parameters, sentence)."""
    blob = json.dumps([model, template.fingerprint, params.as_dict(), sentence], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", errors="replace")).hexdigest()[:32]


def decoding_params(cfg: Config, behaviour: str) -> DecodingParams:
    """The profile's decoding, with the template's stop rule."""
    t = cfg.teacher
    return DecodingParams(max_new_tokens=t.max_new_tokens, greedy=t.greedy, temperature=t.temperature,
                          top_p=t.top_p, seed=cfg.seed, stop=get_template(behaviour).stop)


def teacher_fingerprint(model: str, params: dict[str, DecodingParams]) -> str:
    """Short hash of the model, templates and decoding: one output directory per setting."""
    blob = json.dumps({b: [model, get_template(b).fingerprint, p.as_dict()] for b, p in sorted(params.items())},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def teacher_output_dir(cfg: Config, teacher_role: str = "teacher") -> Path:
    """``data/<profile>/teacher/<role>-<model>-<fingerprint>``: changing decoding or model starts a new one."""
    roles = cfg.models.roles()
    if teacher_role not in roles:
        raise KeyError(f"profile {cfg.profile!r} has no model role {teacher_role!r}; roles: {', '.join(roles)}")
    model = roles[teacher_role]
    fp = teacher_fingerprint(model, {b: decoding_params(cfg, b) for b in BEHAVIOURS})
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")[-60:]
    return artefact_dir(cfg, "teacher") / f"{teacher_role}-{slug}-{fp}"


# Storage ------------------------------------------------------------------------------------------


def shard_file(out_dir: Path, behaviour: str, shard: tuple[int, int]) -> Path:
    i, n = shard
    return out_dir / f"{behaviour}-{i:05d}-of-{n:05d}.jsonl"


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete records of a shard file; a torn (unterminated or unparsable) line is skipped."""
    with path.open("rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break  # torn tail of a killed run
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("format") == RECORD_FORMAT:
                yield row


def iter_rows(out_dir: Path, behaviours: Iterable[str] = BEHAVIOURS) -> Iterator[dict[str, Any]]:
    """Complete rows of all shard files of ``behaviours`` in ``out_dir``, streamed; the first occurrence
    of each (behaviour, passage, sentence index, key) only."""
    seen: set[tuple[str, str, int, str]] = set()
    for behaviour in behaviours:
        for path in sorted(Path(out_dir).glob(f"{behaviour}-*-of-*.jsonl")):
            for row in _read_jsonl(path):
                ident = (row["behaviour"], row["passage_id"], row["sentence_index"], row["key"])
                if ident not in seen:
                    seen.add(ident)
                    yield row


def read_rows(out_dir: Path, behaviours: Iterable[str] = BEHAVIOURS) -> list[dict[str, Any]]:
    """All rows of :func:`iter_rows` as a list."""
    return list(iter_rows(out_dir, behaviours))


def row_to_record(row: dict[str, Any]) -> BehaviourRecord:
    return BehaviourRecord(key=row["key"], behaviour=row["behaviour"], passage_id=row["passage_id"],
                           sentence_index=int(row["sentence_index"]), sentence=row["sentence"],
                           response=row["response"], drop_reason=row["drop_reason"])


def _end_of_last_line(path: Path, size: int, block: int = 1 << 16) -> int:
    """Offset just past the last newline of ``path`` (0 if none), reading backwards from ``size``."""
    with path.open("rb") as fh:
        end = size
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            if (i := chunk.rfind(b"\n")) >= 0:
                return start + i + 1
            end = start
    return 0


class ShardWriter:
    """Appends rows to one shard file, under an exclusive lock, a batch at a time, fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 - held for the writer's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(f"another process is writing {path}; one writer per shard (use teacher.shard=i/N)") \
                from None
        self._fh = open(path, "ab")  # noqa: SIM115
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Cut an unterminated last line (a write interrupted by a kill) so appends start on a fresh line."""
        size = self._fh.seek(0, os.SEEK_END)
        keep = _end_of_last_line(self.path, size)
        if keep < size:
            self._fh.truncate(keep)
            self._fh.seek(keep)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        payload = b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8", errors="replace") + b"\n" for r in rows)
        self._fh.write(payload)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


# The run ------------------------------------------------------------------------------------------


@dataclass
class BehaviourStats:
    """Counts of one behaviour in one run."""

    behaviour: str
    records: int = 0  # records of this shard, done before or now
    reused: int = 0  # already on disk when the run started
    generated: int = 0  # prompts sent to the model in this run (whole regenerated batches included)
    copied: int = 0  # records written from another position's response to the same sentence
    tokens: int = 0  # tokens generated in this run
    truncated: int = 0  # generations that hit max_new_tokens
    seconds: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)  # over all records of this shard

    @property
    def kept(self) -> int:
        return self.records - sum(self.drops.values())


@dataclass
class RunStats:
    """What one run of :func:`generate_behaviours` did."""

    out_dir: str
    model: str
    backend: dict[str, Any]
    shard: str
    behaviours: dict[str, BehaviourStats]
    seconds: float = 0.0

    @property
    def sentences_generated(self) -> int:
        return sum(s.generated for s in self.behaviours.values())

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.behaviours.values())

    def to_frame(self) -> pd.DataFrame:
        """One row per behaviour: records, what this run generated or reused, tokens, time, speed."""
        import pandas as pd

        rows = []
        for b, s in self.behaviours.items():
            secs = max(s.seconds, 1e-9)
            rows.append({"behaviour": b, "records": s.records, "reused": s.reused, "generated": s.generated,
                         "copied (repeated sentence)": s.copied, "tokens": s.tokens, "hit max_new_tokens": s.truncated,
                         "seconds": round(s.seconds, 1),
                         "sentences/s": round(s.generated / secs, 3) if s.generated else None,
                         "tokens/s": round(s.tokens / secs, 1) if s.generated else None,
                         "kept": s.kept})
        return pd.DataFrame(rows)

    def throughput_line(self) -> str:
        gen, secs = self.sentences_generated, max(self.seconds, 1e-9)
        reused = sum(s.reused for s in self.behaviours.values())
        return (f"teacher {self.model} [{self.backend.get('backend')}] shard {self.shard}: generated {gen} responses, "
                f"{self.tokens} tokens in {self.seconds:.1f}s = {gen / secs:.2f} sentences/s, "
                f"{self.tokens / secs:.1f} tokens/s; {reused} records reused from earlier runs")


def cut_batches(keys: list[str], size: int) -> list[list[str]]:
    """``keys`` cut into consecutive batches of ``size``."""
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def generate_behaviours(
    items: Sequence[TeacherItem],
    backend: Backend,
    out_dir: str | os.PathLike[str],
    params: dict[str, DecodingParams],
    shard: str | tuple[int, int] = "0/1",
    progress: bool = True,
    on_batch: Callable[[str, int], None] | None = None,
) -> RunStats:
    """Generate every missing (behaviour, item) response of ``shard`` and append it to the shard files.

    ``params`` maps each behaviour to run to its decoding. Prompts are sorted by length and cut into
    batches of ``backend.batch_size`` over the shard's distinct sentences, finished or not, so a
    restarted run forms the same batches; a batch with anything missing is generated whole. A backend that
    schedules requests itself (``backend.streams``: vLLM) gets every missing prompt as one stream instead, and
    the records are written ``batch_size`` at a time in the order they finish. After each write,
    ``on_batch(behaviour, records_written_so_far)`` is called (tests use it to kill a run).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shard_t = parse_shard(shard)
    shard_text = f"{shard_t[0]}/{shard_t[1]}"
    mine = select_shard(items, shard_t)
    stats = RunStats(str(out), backend.model, backend.describe(), shard_text, {})
    started = time.perf_counter()
    for behaviour, dp in params.items():
        template = get_template(behaviour)
        stats.behaviours[behaviour] = _run_behaviour(mine, backend, out, template, dp, shard_t, progress, on_batch)
    stats.seconds = time.perf_counter() - started
    write_manifest(out, stats, params)
    if progress:
        print(stats.throughput_line(), flush=True)
    return stats


@dataclass
class BehaviourPlan:
    """What one behaviour's run has to do: the records wanted, those on disk, the keys still missing."""

    by_key: dict[str, list[TeacherItem]]
    wanted: set[tuple[str, int, str]]
    done: set[tuple[str, int, str]]
    missing: set[str]
    answer: dict[str, dict[str, Any]]  # a response on disk to a missing key (the sentence at another position)
    order: list[str]  # distinct keys, shortest sentence first


def plan_behaviour(items: Sequence[TeacherItem], model: str, out: Path, template: PromptTemplate, dp: DecodingParams
                   ) -> BehaviourPlan:
    """The records ``items`` want of one behaviour, those already in ``out``, and the keys still to generate."""
    by_key: dict[str, list[TeacherItem]] = defaultdict(list)
    for it in items:
        by_key[record_key(model, template, dp, it.sentence)].append(it)
    wanted = {(it.passage_id, it.sentence_index, k) for k, its in by_key.items() for it in its}
    done = {ident for r in iter_rows(out, [template.behaviour]) if (ident := row_ident(r)) in wanted}
    missing = {k for (_, _, k) in wanted - done}
    answer = ({r["key"]: r for r in iter_rows(out, [template.behaviour]) if r["key"] in missing}
              if missing else {})
    order = sorted(by_key, key=lambda k: (len(normalize_input(by_key[k][0].sentence)), k))
    return BehaviourPlan(by_key, wanted, done, missing, answer, order)


def rows_for(plan: BehaviourPlan, key: str, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``key`` not on disk yet, one per position of its sentence; marks them done."""
    rows = []
    for it in plan.by_key[key]:
        ident = (it.passage_id, it.sentence_index, key)
        if ident not in plan.done:
            rows.append({**base, "passage_id": it.passage_id, "sentence_index": it.sentence_index})
            plan.done.add(ident)
    plan.missing.discard(key)
    return rows


def _run_behaviour(
    items: Sequence[TeacherItem], backend: Backend, out: Path, template: PromptTemplate, dp: DecodingParams,
    shard: tuple[int, int], progress: bool, on_batch: Callable[[str, int], None] | None,
) -> BehaviourStats:
    from tqdm import tqdm

    behaviour = template.behaviour
    st = BehaviourStats(behaviour)
    plan = plan_behaviour(items, backend.model, out, template, dp)
    st.records, st.reused = len(plan.wanted), len(plan.done)
    writer = ShardWriter(shard_file(out, behaviour, shard))
    bar = tqdm(total=len(plan.wanted), initial=st.reused, desc=f"teacher {behaviour}", unit="sent",
               disable=not progress, dynamic_ncols=True)
    written = st.reused

    def write(rows: list[dict[str, Any]]) -> None:
        nonlocal written
        writer.write(rows)
        written += len(rows)
        bar.update(len(rows))
        secs = max(st.seconds, 1e-9)
        bar.set_postfix_str(f"{st.generated / secs:.2f} sent/s, {st.tokens / secs:.1f} tok/s")
        if on_batch is not None:
            on_batch(behaviour, written)

    try:
        runner = _stream_missing if backend.streams else _batch_missing
        runner(plan, backend, template, dp, st, write)
    finally:
        bar.close()
        writer.close()
    st.drops = dict(Counter(r["drop_reason"] for r in iter_rows(out, [behaviour])
                            if r["drop_reason"] and row_ident(r) in plan.wanted))
    return st


def _batch_missing(plan: BehaviourPlan, backend: Backend, template: PromptTemplate, dp: DecodingParams,
                   st: BehaviourStats, write: Callable[[list[dict[str, Any]]], None]) -> None:
    """Fixed batches over every distinct key; a batch with anything missing is generated whole, so a resumed run
    forms the batches of an uninterrupted one (the same texts with transformers; see :mod:`brdlib.backends`)."""
    for batch in cut_batches(plan.order, backend.batch_size):
        if not plan.missing.intersection(batch):
            continue
        gens: dict[str, Generation] = {}
        if any(k in plan.missing and k not in plan.answer for k in batch):
            t0 = time.perf_counter()
            prompts = [template.render(plan.by_key[k][0].sentence) for k in batch]
            outs = backend.generate(prompts, dp, shared_prefix=template.prefix)
            gens = dict(zip(batch, outs, strict=True))
            count_generations(st, outs, time.perf_counter() - t0)
        rows = []
        for k in batch:
            if k in plan.missing:
                base = make_row(k, template, plan.by_key[k][0].sentence, gens[k], backend) if k in gens \
                    else plan.answer[k]
                st.copied += k not in gens
                rows += rows_for(plan, k, base)
        write(rows)


def _stream_missing(plan: BehaviourPlan, backend: Backend, template: PromptTemplate, dp: DecodingParams,
                    st: BehaviourStats, write: Callable[[list[dict[str, Any]]], None]) -> None:
    """Every missing key in one stream (vLLM schedules them); records are written ``backend.batch_size`` at a
    time as they finish, so a kill loses at most the unwritten ones and a resumed run asks only for those."""
    copies = [k for k in plan.order if k in plan.missing and k in plan.answer]
    if copies:
        st.copied += len(copies)
        write([row for k in copies for row in rows_for(plan, k, plan.answer[k])])
    todo = [k for k in plan.order if k in plan.missing]
    pending: list[dict[str, Any]] = []
    for block in cut_batches(todo, STREAM_BLOCK):
        prompts = [template.render(plan.by_key[k][0].sentence) for k in block]
        t0 = time.perf_counter()
        with contextlib.closing(backend.generate_stream(prompts, dp, shared_prefix=template.prefix)) as stream:
            for i, gen in stream:
                k = block[i]
                count_generations(st, [gen], time.perf_counter() - t0)
                t0 = time.perf_counter()
                pending += rows_for(plan, k, make_row(k, template, plan.by_key[k][0].sentence, gen, backend))
                if len(pending) >= backend.batch_size:
                    write(pending)
                    pending = []
    write(pending)


def count_generations(st: BehaviourStats, gens: Sequence[Generation], seconds: float) -> None:
    """Add ``gens`` (generated in ``seconds``) to a behaviour's counts."""
    st.generated += len(gens)
    st.tokens += sum(g.n_tokens for g in gens)
    st.truncated += sum(g.finish_reason == "length" for g in gens)
    st.seconds += seconds


def row_ident(row: dict[str, Any]) -> tuple[str, int, str]:
    """(passage id, sentence index, key): what makes a record unique."""
    return row["passage_id"], row["sentence_index"], row["key"]


def make_row(key: str, template: PromptTemplate, sentence: str, gen: Generation, backend: Backend | str
             ) -> dict[str, Any]:
    """The stored record of one generation (cleaned by the template's rules); positions are filled by
    :func:`rows_for`."""
    cleaned = clean_response(gen.text, template, sentence)
    return {
        "format": RECORD_FORMAT,
        "key": key,
        "behaviour": template.behaviour,
        "passage_id": "",
        "sentence_index": 0,
        "sentence": sentence,
        "response": cleaned.text if cleaned.kept else "",
        "drop_reason": cleaned.drop_reason,
        "raw": gen.text,
        "n_tokens": gen.n_tokens,
        "finish_reason": gen.finish_reason,
        "backend": backend if isinstance(backend, str) else backend.name,
    }


# Manifest -----------------------------------------------------------------------------------------


def manifest_path(out_dir: Path, shard: str) -> Path:
    i, n = parse_shard(shard)
    return Path(out_dir) / f"manifest-{i:05d}-of-{n:05d}.json"


def write_manifest(out_dir: Path, stats: RunStats, params: dict[str, DecodingParams], path: Path | None = None
                   ) -> Path:
    """Add this run to the shard's manifest (or to ``path``), written to a temporary file, then renamed into place."""
    path = path or manifest_path(out_dir, stats.shard)
    previous = read_manifest(path)
    run = {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "wall_seconds": round(stats.seconds, 2),
        "sentences_generated": stats.sentences_generated,
        "tokens": stats.tokens,
        "sentences_per_second": round(stats.sentences_generated / max(stats.seconds, 1e-9), 3),
        "tokens_per_second": round(stats.tokens / max(stats.seconds, 1e-9), 2),
        "behaviours": {b: {**asdict(s), "kept": s.kept} for b, s in stats.behaviours.items()},
    }
    manifest = {
        "model": stats.model,
        "backend": stats.backend,
        "shard": stats.shard,
        "decoding": {b: p.as_dict() for b, p in params.items()},
        "templates": {b: get_template(b).fingerprint for b in params},
        "counts": {b: {"records": s.records, "kept": s.kept, "dropped": s.drops} for b, s in stats.behaviours.items()},
        "runs": [*previous.get("runs", []), run],
    }
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    return path


def read_manifest(path: Path) -> dict[str, Any]:
    with contextlib.suppress(FileNotFoundError, ValueError):
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):
            return data
    return {}


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    """Every shard's manifest in ``out_dir``."""
    return [read_manifest(p) for p in sorted(Path(out_dir).glob("manifest-*-of-*.json"))]


# Profile-level entry points -----------------------------------------------------------------------


EngineRun = Callable[["Config", Sequence[TeacherItem], str, Sequence[str], bool], RunStats]
_ENGINES: dict[str, EngineRun] = {}


def register_engine(name: str, run: EngineRun) -> None:
    """Make ``teacher.engine: <name>`` run the teacher through ``run`` (the engine's module registers itself)."""
    _ENGINES[name] = run


def teacher_engine(name: str) -> EngineRun:
    """The engine registered as ``name``; its module ``brdlib.teacher_<name>`` is imported on first use, so this
    stage never imports an engine (and Ray) unless a profile asks for it."""
    if name not in _ENGINES:
        try:
            importlib.import_module(f"brdlib.teacher_{name}")
        except ModuleNotFoundError as err:
            raise ValueError(f"teacher.engine {name!r} is not available ({err}); accepted: local, ray") from err
    return _ENGINES[name]


def run_teacher(
    cfg: Config,
    items: Sequence[TeacherItem] | Iterable[Passage],
    teacher_role: str = "teacher",
    backend: Backend | None = None,
    behaviours: Sequence[str] | None = None,
    shard: str | None = None,
    progress: bool = True,
) -> RunStats:
    """Generate the profile's behaviours for ``items`` (or passages) into :func:`teacher_output_dir`.

    Loads the model only when something is missing; ``backend`` may be given to reuse a loaded one.
    ``teacher.engine`` other than 'local' hands the work to that engine (``ray``: :mod:`brdlib.teacher_ray`,
    over a Ray cluster; ``shard`` is then the engine's own).
    """
    items = list(items)
    if items and not isinstance(items[0], TeacherItem):
        items = items_from_passages(items)
    behaviours = list(behaviours or cfg.teacher.behaviours)
    for b in behaviours:
        get_template(b)
    if cfg.teacher.engine != "local" and backend is None:
        return teacher_engine(cfg.teacher.engine)(cfg, items, teacher_role, behaviours, progress)
    shard = shard or cfg.teacher.shard
    params = {b: decoding_params(cfg, b) for b in behaviours}
    out = teacher_output_dir(cfg, teacher_role)
    if backend is None and _all_done(items, out, cfg.models.roles()[teacher_role], params, shard):
        return _stats_from_disk(items, out, cfg.models.roles()[teacher_role], params, shard, progress)
    own = backend is None
    if backend is None:

        backend = make_backend(cfg, teacher_role)
    try:
        return generate_behaviours(items, backend, out, params, shard=shard, progress=progress)
    finally:
        if own:
            backend.close()


def _wanted(items: Sequence[TeacherItem], model: str, params: dict[str, DecodingParams], shard: str
            ) -> dict[str, set[tuple[str, int, str]]]:
    mine = select_shard(items, shard)
    return {b: {(it.passage_id, it.sentence_index, record_key(model, get_template(b), dp, it.sentence)) for it in mine}
            for b, dp in params.items()}


def _all_done(items: Sequence[TeacherItem], out: Path, model: str, params: dict[str, DecodingParams], shard: str
              ) -> bool:
    if not out.is_dir():
        return False
    wanted = _wanted(items, model, params, shard)
    for b, want in wanted.items():
        have = {row_ident(r) for r in iter_rows(out, [b])}
        if want - have:
            return False
    return True


def _stats_from_disk(items: Sequence[TeacherItem], out: Path, model: str, params: dict[str, DecodingParams],
                     shard: str, progress: bool) -> RunStats:
    """Stats of a shard that is already complete: nothing to load or generate."""
    wanted = _wanted(items, model, params, shard)
    manifest = read_manifest(manifest_path(out, shard))
    i, n = parse_shard(shard)
    stats = RunStats(str(out), model, manifest.get("backend", {"backend": "none"}), f"{i}/{n}", {})
    for b, want in wanted.items():
        rows = [r for r in iter_rows(out, [b]) if row_ident(r) in want]
        stats.behaviours[b] = BehaviourStats(b, records=len(want), reused=len(want),
                                             drops=dict(Counter(r["drop_reason"] for r in rows if r["drop_reason"])))
    if progress:
        print(f"teacher: all {sum(len(w) for w in wanted.values())} records of shard {i}/{n} already in {out}; "
              "nothing to generate")
    return stats


def load_behaviours(
    cfg: Config, teacher_role: str = "teacher", passages: Iterable[Passage] | None = None
) -> list[BehaviourRecord]:
    """Every record in the profile's teacher output directory: all shards, all behaviours.

    With ``passages``, only the records of their sentences (as they read now) are returned, so
    records left by an earlier, different corpus are ignored.
    """
    out = teacher_output_dir(cfg, teacher_role)
    if not out.is_dir():
        raise FileNotFoundError(
            f"no teacher outputs for role {teacher_role!r} of profile {cfg.profile!r} in {out}; "
            "run notebooks/01_teacher_generation.ipynb (or brdlib.teacher.run_teacher) first"
        )
    rows = read_rows(out, BEHAVIOURS)
    if passages is not None:
        model = cfg.models.roles()[teacher_role]
        params = {b: decoding_params(cfg, b) for b in BEHAVIOURS}
        wanted = _wanted(items_from_passages(passages), model, params, "0/1")
        rows = [r for r in rows if row_ident(r) in wanted.get(r["behaviour"], set())]
    return [row_to_record(r) for r in rows]


# Tables for the notebook --------------------------------------------------------------------------


def drop_table(records: Sequence[BehaviourRecord]) -> pd.DataFrame:
    """Counts per behaviour: records, kept, and dropped by reason (with shares)."""
    import pandas as pd

    rows = []
    for b in sorted({r.behaviour for r in records}, key=lambda x: (BEHAVIOURS + (x,)).index(x)):
        mine = [r for r in records if r.behaviour == b]
        counts = Counter(r.drop_reason for r in mine)
        row: dict[str, Any] = {"behaviour": b, "records": len(mine), "kept": counts.get(None, 0)}
        reasons = list(DROP_REASONS) + sorted(k for k in counts if k and k not in DROP_REASONS)
        for reason in reasons:
            row[f"dropped: {reason}"] = counts.get(reason, 0)
        row["kept %"] = round(100 * row["kept"] / max(len(mine), 1), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def sample_table(records: Sequence[BehaviourRecord], n: int = 3, seed: int = 0, kept_only: bool = True
                 ) -> pd.DataFrame:
    """A reproducible sample of ``n`` responses per behaviour, beside the paper's example (Tables 1 and 2).

    Line breaks inside a response are shown as spaces, so the table stays one row per response."""
    import random

    import pandas as pd

    rows = []
    for b in BEHAVIOURS:
        rows.append({"behaviour": b, "source": "paper (Vicuna-13B)", "sentence": PAPER_INPUT,
                     "response": _one_line(PAPER_RESPONSES[b]), "drop_reason": None})
        pool = sorted((r for r in records if r.behaviour == b and (r.drop_reason is None or not kept_only)),
                      key=lambda r: r.key)
        for r in random.Random(seed).sample(pool, min(n, len(pool))):
            rows.append({"behaviour": b, "source": "ours", "sentence": r.sentence,
                         "response": _one_line(r.response), "drop_reason": r.drop_reason})
    return pd.DataFrame(rows)


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text).strip()


def outcome_figure(records: Sequence[BehaviourRecord], title: str = "") -> Any:
    """Two panels: records kept and dropped by reason per behaviour; word counts of the kept responses,
    with the length of the paper's own example response (Tables 1 and 2) marked."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = drop_table(records)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8))
    outcomes = ["kept"] + [c for c in table.columns if c.startswith("dropped:")]
    table.set_index("behaviour")[outcomes].plot.barh(stacked=True, ax=left, width=0.6)
    left.invert_yaxis()
    left.set_xlabel("sentences")
    left.set_ylabel("")
    left.set_title("Responses kept and dropped, by reason", fontsize=11)
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    colours = dict(zip(BEHAVIOURS, sns.color_palette("colorblind", len(BEHAVIOURS)), strict=True))
    lengths = [{"behaviour": r.behaviour, "words": len(r.response.split())} for r in records if r.drop_reason is None]
    if lengths:
        import pandas as pd

        present = [b for b in BEHAVIOURS if any(x["behaviour"] == b for x in lengths)]
        sns.histplot(pd.DataFrame(lengths), x="words", hue="behaviour", hue_order=present, palette=colours,
                     element="step", stat="count", common_norm=False, ax=right, bins=20)
    for b, response in PAPER_RESPONSES.items():
        words = len(response.split())
        right.axvline(words, ls="--", lw=1.2, color=colours[b])
        right.annotate(f"paper's {b} example", (words, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                       rotation=90, ha="right", va="top", color=colours[b])
    right.set_xlabel("words per kept response")
    right.set_title("Length of the kept responses", fontsize=11)
    if title:
        fig.suptitle(title, fontsize=9, y=1.02)
    fig.tight_layout()
    return fig


def build_teacher_records(cfg: Config, roles: list[str], progress: bool = True) -> None:
    """The store's builder of ``teacher/<role>``: each role's records for the profile's corpus (only what is
    missing is generated)."""
    passages = load_passages(cfg, progress=progress)
    for role in roles:
        run_teacher(cfg, passages, role, progress=progress)


register_builder("teacher", build_teacher_records)
