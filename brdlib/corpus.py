"""The general corpus: documents → sentences → filtered, deduplicated passages of k consecutive sentences.

    from brdlib.corpus import load_passages, corpus_label
    passages = load_passages(cfg)          # cached under cfg.data_dir/corpus/, reused on re-runs
    print(corpus_label(cfg), len(passages))

Sources (``data.corpus``):

- ``cc100`` — the paper's CC-100 English, **streamed** from ``data.cc100_url`` (an ``.xz`` file of one
  paragraph per line, documents separated by blank lines; read through fsspec block by block and decompressed
  on the fly, so taking 5M sentences reads only the first few GB, never the whole 82 GB). With
  ``data.hub_fixture_dir`` (the rehearsal profile) the same reader streams ``<fixture>/cc100/en.txt.xz``, a small
  file in that format.
- ``text_file`` — any local plain-text file in CC-100's format (``data.corpus_file``; ``.gz``/``.xz``/``.bz2``
  are decompressed on the fly).
- Offline stand-ins for CC-100, labelled as stand-ins wherever they are used (:func:`corpus_label`), read from
  the mirror in place: ``c4`` (1,000 Common Crawl documents, the closest in kind; the default),
  ``wikitext2`` (tokenized text: spacing undone, ``<unk>``-heavy lines and headings skipped), and the NLTK
  corpora ``brown`` (POS tags stripped), ``abc``, ``webtext`` and ``state_union``.

Processing, in order:

1. Documents are shuffled with ``cfg.seed`` through a buffer of ``data.shuffle_buffer_docs`` documents
   (a full shuffle for the small stand-ins; for the stream, the seeded shuffle of a sliding window).
2. Each paragraph is split into sentences with **pySBD** (rule-based, no model files, deterministic, and the
   most accurate of the installable English splitters on the Golden Rules set of abbreviations, decimals,
   quotes and lists; see :data:`TRICKY_CASES`).
3. Sentences are dropped, each drop counted by reason in :class:`CorpusStats`: fewer than
   ``data.min_sentence_words`` or more than ``data.max_sentence_words`` words, no letters, ``<unk>`` left in,
   or an exact duplicate (case- and whitespace-insensitive) of a sentence already kept.
4. Runs of consecutive kept sentences of one document are cut into passages of
   ``data.sentences_per_passage`` sentences; a dropped sentence ends a run, so a passage is always contiguous
   text, and a run's remainder (fewer than k sentences) is kept as a shorter passage.
5. Reading stops once ``data.n_sentences`` sentences are in passages (the last passage is cut to fit).

The result is deterministic given the profile (corpus, sizes, filters, seed): the passages and their
statistics are written to ``cfg.data_dir/corpus/`` and re-read by later calls and stages.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import random
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from brdlib.records import Document, Passage
from brdlib.store import artefact_dir, write_text_atomic

if TYPE_CHECKING:
    import pandas as pd

    from brdlib.config import Config

__all__ = [
    "CC100_FIXTURE", "CORPUS_FORMAT_VERSION", "CORPUS_LABELS", "MIRROR_PATHS", "STAND_IN", "TRICKY_CASES",
    "WIKITEXT_MAX_UNK_SHARE", "CorpusError", "CorpusStats", "build_passages", "cc100_fixture", "cc100_source",
    "corpus_cache_key", "corpus_label", "corpus_paths", "corpus_summary_table", "detokenize", "iter_brown",
    "iter_c4", "iter_cc100_format", "iter_documents", "iter_plaintext_zip", "iter_text_file", "iter_wikitext",
    "load_corpus_stats", "load_passages", "open_text_stream", "passage_source", "sentence_drop_reason", "shuffled",
    "split_sentences", "splitter_demo", "strip_brown_tags", "undo_wikitext_spacing",
]

log = logging.getLogger(__name__)

CORPUS_FORMAT_VERSION = 1
"""Bump when processing changes, so cached passages of an older version are not reused."""

STAND_IN = "stand-in for CC-100"
CORPUS_LABELS: dict[str, str] = {
    "cc100": "CC-100 English (streamed)",
    "text_file": "plain-text file in CC-100 format",
    "c4": f"C4 sample, 1,000 Common Crawl documents ({STAND_IN})",
    "wikitext2": f"WikiText-2 valid+test, detokenized ({STAND_IN})",
    "brown": f"Brown corpus, POS tags stripped ({STAND_IN})",
    "abc": f"ABC rural and science news ({STAND_IN})",
    "webtext": f"NLTK webtext: forums, reviews, scripts ({STAND_IN})",
    "state_union": f"State of the Union addresses 1945-2006 ({STAND_IN})",
}
"""Human-readable label of each corpus, for captions; every offline corpus says it stands in for CC-100."""

MIRROR_PATHS: dict[str, str] = {
    "c4": "corpus_web/c4/c4-sample.00000-of-00001.json.gz",
    "wikitext2": "corpus_web/wikitext-2",
    "brown": "corpus_nltk/brown.zip",
    "abc": "corpus_nltk/abc.zip",
    "webtext": "corpus_nltk/webtext.zip",
    "state_union": "corpus_nltk/state_union.zip",
}
"""Where each offline stand-in lives inside the mirror (see the mirror's MANIFEST.md)."""

TRICKY_CASES: tuple[str, ...] = (
    "Dr. Smith arrived at 5 p.m. on Jan. 5. He left soon after.",
    "The price rose 3.5% to $12.75 in the U.S. last year. Analysts were surprised.",
    '"Is it over?" she asked. "Yes," he said. "It is."',
    'He said, "I\'ll be there at 10.30 a.m." Then he left.',
    "Mr. and Mrs. Jones live on St. James St. near the U.K. embassy. They moved in 2019.",
    "Version 2.0 is out (see www.example.com). Download it e.g. from the site.",
)
"""Abbreviations, decimals, quotes: the cases the splitter is shown on (notebook 00, tests)."""


class CorpusError(ValueError):
    """A corpus that cannot be read: unknown name, missing file, or a malformed record (named)."""


@dataclass
class CorpusStats:
    """Everything read, kept and dropped while building the passages (nothing is dropped silently)."""

    corpus: str
    label: str
    documents_read: int = 0
    documents_used: int = 0
    paragraphs: int = 0
    sentences_split: int = 0
    sentences_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    source_skipped: dict[str, int] = field(default_factory=dict)  # lines/records skipped while reading
    passages: int = 0
    passage_lengths: dict[int, int] = field(default_factory=dict)
    n_sentences_requested: int = 0
    exhausted: bool = False  # the corpus ran out before n_sentences

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def skip(self, reason: str, n: int = 1) -> None:
        self.source_skipped[reason] = self.source_skipped.get(reason, 0) + n


# Labels --------------------------------------------------------------------------------------------


def _check_corpus(name: str) -> str:
    if name not in CORPUS_LABELS:
        raise CorpusError(f"unknown corpus {name!r}; accepted: {', '.join(CORPUS_LABELS)}")
    return name


def corpus_label(cfg: Config) -> str:
    """Caption label of the profile's corpus, e.g. 'C4 sample, 1,000 Common Crawl documents (stand-in for CC-100)'."""
    name = _check_corpus(cfg.data.corpus)
    label = CORPUS_LABELS[name]
    if name == "text_file":
        label = f"{label}: {Path(str(cfg.data.corpus_file)).name}"
    if (name in MIRROR_PATHS and cfg.data.source == "fixture") or (name == "cc100" and cc100_fixture(cfg)):
        label += " — test-fixture rows, not the real corpus"
    return label


CC100_FIXTURE = "cc100/en.txt.xz"
"""CC-100 English in its own format, under ``data.hub_fixture_dir`` (tests/fixtures/hub/make_fixtures.py)."""


def cc100_fixture(cfg: Config) -> Path | None:
    """The CC-100 fixture that ``data.hub_fixture_dir`` puts in place of ``data.cc100_url``, or None."""
    fixture = cfg.data.resolved_hub_fixture_dir()
    return None if fixture is None else fixture / CC100_FIXTURE


def cc100_source(cfg: Config) -> str:
    """Where CC-100 is streamed from: ``data.cc100_url``, or the hub fixture's copy."""
    fixture = cc100_fixture(cfg)
    return cfg.data.cc100_url if fixture is None else str(fixture)


def passage_source(name: str) -> str:
    """Short source tag stored in each passage: 'c4 (stand-in for CC-100)', 'cc100', ..."""
    return f"{name} ({STAND_IN})" if name in MIRROR_PATHS else name


# Sentence splitting -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _segmenter():  # noqa: ANN202 - pysbd has no type hints
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph (pySBD, English, text kept as written), stripped, empty ones removed."""
    text = " ".join(paragraph.split())
    if not text:
        return []
    return [s.strip() for s in _segmenter().segment(text) if s.strip()]


# Readers: each yields Documents in the source's own order -------------------------------------------


def iter_cc100_format(lines: Iterable[str], prefix: str) -> Iterator[Document]:
    """CC-100's format: one paragraph per line, documents separated by blank lines."""
    paragraphs: list[str] = []
    index = 0
    for line in lines:
        text = line.strip()
        if text:
            paragraphs.append(text)
        elif paragraphs:
            yield Document(index, f"{prefix}:{index:06d}", tuple(paragraphs))
            index += 1
            paragraphs = []
    if paragraphs:
        yield Document(index, f"{prefix}:{index:06d}", tuple(paragraphs))


def open_text_stream(path_or_url: str) -> io.TextIOBase:
    """Open a local path or URL as text, decompressing .gz/.xz/.bz2/.zst on the fly (fsspec, streamed)."""
    import fsspec

    try:
        return fsspec.open(path_or_url, "rt", compression="infer", encoding="utf-8", errors="replace").open()
    except OSError as err:
        if "://" in path_or_url:
            raise CorpusError(
                f"corpus address {path_or_url!r} could not be opened (no network, or it moved): {err!r}; "
                "set data.cc100_url to a reachable copy, or use a local file"
            ) from None
        raise CorpusError(f"corpus file {path_or_url!r} could not be opened: {err}") from None


def iter_text_file(path_or_url: str, prefix: str) -> Iterator[Document]:
    """Documents of a CC-100-format text file or URL, streamed line by line."""
    with open_text_stream(path_or_url) as fh:
        yield from iter_cc100_format(fh, prefix)


def iter_c4(path: Path, stats: CorpusStats) -> Iterator[Document]:
    """C4's gzip JSON lines ``{text, url, timestamp}``; a document's paragraphs are its text's lines."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CorpusError(f"corpus c4: file {path}, row {row}: not a JSON object with 'text' ({err})") from None
            paragraphs = tuple(p.strip() for p in text.split("\n") if p.strip())
            if not paragraphs:
                stats.skip("empty document")
                continue
            yield Document(row - 1, f"c4:{row - 1:06d}", paragraphs)


_WIKITEXT_HEADING = re.compile(r"^(=\s)+.*?(\s=)+$")
_WIKITEXT_TITLE = re.compile(r"^=\s[^=].*[^=]\s=$")
WIKITEXT_MAX_UNK_SHARE = 0.05
"""A WikiText line with more than this share of ``<unk>`` tokens is skipped (counted)."""


@lru_cache(maxsize=1)
def _detokenizer():  # noqa: ANN202
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang="en")


def detokenize(tokens: list[str]) -> str:
    """Moses detokenization (sacremoses) of space-separated tokens; PTB quotes `` '' become '"'."""
    tokens = ['"' if t in ("``", "''") else t for t in tokens]
    return _detokenizer().detokenize(tokens)


def undo_wikitext_spacing(line: str) -> str:
    """WikiText's ' @-@ ', ' @,@ ', ' @.@ ' joiners and Moses-style token spacing undone."""
    text = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    return detokenize(text.split())


def iter_wikitext(folder: Path, stats: CorpusStats) -> Iterator[Document]:
    """WikiText-2 valid then test: an article starts at each ' = Title = ' line; headings are skipped."""
    index = 0
    for split in ("valid", "test"):
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise CorpusError(f"corpus wikitext2: file {path} is missing")
        paragraphs: list[str] = []
        with path.open(encoding="utf-8") as fh:
            for raw in fh:
                line = raw.strip()
                if not line:
                    continue
                if _WIKITEXT_TITLE.match(line):
                    if paragraphs:
                        yield Document(index, f"wikitext2:{split}:{index:05d}", tuple(paragraphs))
                        index += 1
                    paragraphs = []
                    stats.skip("heading line")
                    continue
                if _WIKITEXT_HEADING.match(line):
                    stats.skip("heading line")
                    continue
                tokens = line.split()
                if tokens.count("<unk>") > WIKITEXT_MAX_UNK_SHARE * len(tokens):
                    stats.skip("<unk>-heavy line")
                    continue
                paragraphs.append(undo_wikitext_spacing(line))
        if paragraphs:
            yield Document(index, f"wikitext2:{split}:{index:05d}", tuple(paragraphs))
            index += 1


def _decode(data: bytes) -> str:
    """UTF-8, else Latin-1 (several NLTK corpus files are Latin-1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_BROWN_FILE = re.compile(r"(^|/)c[a-r]\d\d$")


def strip_brown_tags(line: str, where: str) -> str:
    """'The/at jury/nn said/vbd ./.' → 'The jury said.' (tags cut at the last '/', then detokenized)."""
    words = []
    for token in line.split():
        word, sep, tag = token.rpartition("/")
        if not sep or not word or not tag:
            raise CorpusError(f"corpus brown: {where}: token {token!r} is not word/TAG")
        words.append(word)
    return detokenize(words)


def iter_brown(zip_path: Path, stats: CorpusStats) -> Iterator[Document]:
    """Brown's 500 files (ca01 … cr09), one document each; every tagged line is one sentence-paragraph."""
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if _BROWN_FILE.search(n))
        for index, name in enumerate(names):
            paragraphs = []
            for lineno, line in enumerate(_decode(zf.read(name)).splitlines(), start=1):
                if line.strip():
                    paragraphs.append(strip_brown_tags(line, f"file {zip_path}:{name}, row {lineno}"))
            if not paragraphs:
                stats.skip("empty document")
                continue
            yield Document(index, f"brown:{Path(name).name}", tuple(paragraphs))


def iter_plaintext_zip(zip_path: Path, corpus: str) -> Iterator[Document]:
    """ABC, webtext, State of the Union: each .txt file read in CC-100's format (blank line = new document)."""
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".txt"))
        index = 0
        for name in names:
            for doc in iter_cc100_format(_decode(zf.read(name)).splitlines(), f"{corpus}:{Path(name).stem}"):
                yield Document(index, doc.doc_id, doc.paragraphs)
                index += 1


def iter_documents(cfg: Config, stats: CorpusStats) -> Iterator[Document]:
    """The documents of the profile's corpus, in the source's own order."""
    name = _check_corpus(cfg.data.corpus)
    if name == "cc100":
        yield from iter_text_file(cc100_source(cfg), "cc100")
        return
    if name == "text_file":
        path = Path(str(cfg.data.corpus_file)).expanduser()
        if not path.is_file():
            raise CorpusError(f"corpus text_file: file {path} does not exist (data.corpus_file)")
        yield from iter_text_file(str(path), "text")
        return
    mirror = cfg.data.resolved_data_dir() or cfg.data.resolved_mirror_dir()
    if mirror is None:
        raise CorpusError(
            f"corpus {name!r} is read from the offline mirror, and none was found: set $BRD_DATA_DIR or "
            "data.mirror_dir, or use data.corpus=cc100 / text_file"
        )
    path = mirror / MIRROR_PATHS[name]
    if not path.exists():
        raise CorpusError(f"corpus {name}: file {path} is missing from the mirror {mirror}")
    if name == "c4":
        yield from iter_c4(path, stats)
    elif name == "wikitext2":
        yield from iter_wikitext(path, stats)
    elif name == "brown":
        yield from iter_brown(path, stats)
    else:
        yield from iter_plaintext_zip(path, name)


def shuffled(items: Iterable[Document], seed: int, buffer_size: int) -> Iterator[Document]:
    """Seeded buffer shuffle, as ``datasets.IterableDataset.shuffle`` does, on plain Python objects.

    Hand-written (10 lines) because the library's version needs the stream wrapped as an Arrow dataset.
    """
    rng = random.Random(seed)
    buffer: list[Document] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(buffer_size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


# Filtering and grouping ---------------------------------------------------------------------------


def _dedup_key(sentence: str) -> int:
    normal = " ".join(sentence.lower().split())
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8"), digest_size=8).digest(), "little")


def sentence_drop_reason(sentence: str, min_words: int, max_words: int) -> str | None:
    """Why a sentence is dropped, or None to keep it (duplicates are checked separately)."""
    n_words = len(sentence.split())
    if n_words < min_words:
        return f"fewer than {min_words} words"
    if n_words > max_words:
        return f"more than {max_words} words"
    if not any(c.isalpha() for c in sentence):
        return "no letters"
    if "<unk>" in sentence:
        return "<unk> token"
    return None


def build_passages(
    documents: Iterable[Document],
    *,
    corpus: str,
    n_sentences: int,
    sentences_per_passage: int,
    min_words: int,
    max_words: int,
    stats: CorpusStats,
    progress: bool = True,
) -> list[Passage]:
    """Split, filter, deduplicate and group ``documents`` into passages until ``n_sentences`` are taken."""
    from tqdm.auto import tqdm

    source = passage_source(corpus)
    seen: set[int] = set()
    passages: list[Passage] = []
    taken = 0
    bar = tqdm(total=n_sentences, desc=f"corpus {corpus}", unit="sent", disable=not progress)
    for doc in documents:
        stats.documents_read += 1
        runs: list[list[str]] = [[]]
        for paragraph in doc.paragraphs:
            stats.paragraphs += 1
            for sentence in split_sentences(paragraph):
                stats.sentences_split += 1
                reason = sentence_drop_reason(sentence, min_words, max_words)
                if reason is None:
                    key = _dedup_key(sentence)
                    if key in seen:
                        reason = "duplicate"
                    else:
                        seen.add(key)
                if reason is not None:
                    stats.drop(reason)
                    if runs[-1]:
                        runs.append([])
                    continue
                runs[-1].append(sentence)
        number = 0
        used = False
        for run in runs:
            for start in range(0, len(run), sentences_per_passage):
                if taken >= n_sentences:
                    break
                chunk = run[start : start + sentences_per_passage][: n_sentences - taken]
                passages.append(Passage(f"{corpus}-{doc.index:06d}-{number:03d}", doc.doc_id, tuple(chunk), source))
                number += 1
                taken += len(chunk)
                used = True
                bar.update(len(chunk))
        stats.documents_used += used
        if taken >= n_sentences:
            break
    bar.close()
    stats.sentences_kept = taken
    stats.passages = len(passages)
    stats.passage_lengths = dict(sorted(Counter(len(p.sentences) for p in passages).items()))
    stats.n_sentences_requested = n_sentences
    if taken < n_sentences:
        stats.exhausted = True
        warnings.warn(
            f"corpus {corpus}: only {taken} sentences after filtering, fewer than data.n_sentences={n_sentences}",
            stacklevel=2,
        )
    return passages


# Loading with a cache ------------------------------------------------------------------------------


def corpus_cache_key(cfg: Config) -> str:
    """Short hash of everything that determines the passages."""
    d = cfg.data
    if d.corpus in MIRROR_PATHS:
        root = d.resolved_data_dir() or d.resolved_mirror_dir() or Path("<no mirror>")
        source = str(root / MIRROR_PATHS[d.corpus])
    else:
        source = cc100_source(cfg) if d.corpus == "cc100" else str(d.corpus_file)
    spec = {
        "version": CORPUS_FORMAT_VERSION,
        "corpus": d.corpus,
        "source": source,
        "n": d.n_sentences,
        "k": d.sentences_per_passage,
        "seed": cfg.seed,
        "min": d.min_sentence_words,
        "max": d.max_sentence_words,
        "buffer": d.shuffle_buffer_docs,
    }
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def corpus_paths(cfg: Config) -> tuple[Path, Path]:
    """Where the profile's passages (JSON lines) and their statistics (JSON) are cached."""
    d = cfg.data
    stem = f"passages_{d.corpus}_n{d.n_sentences}_k{d.sentences_per_passage}_seed{cfg.seed}_{corpus_cache_key(cfg)}"
    folder = artefact_dir(cfg, "corpus")
    return folder / f"{stem}.jsonl", folder / f"{stem}.stats.json"


def _read_passages(path: Path) -> list[Passage]:
    passages = []
    with path.open(encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            try:
                d = json.loads(line)
                passages.append(Passage(d["passage_id"], d["doc_id"], tuple(d["sentences"]), d["source"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CorpusError(f"cached passages {path}, row {row} is malformed ({err}); delete the file") from None
    return passages


def load_passages(cfg: Config, progress: bool = True) -> list[Passage]:
    """The profile's passages (``data.corpus``, ``n_sentences``, ``sentences_per_passage``, ``seed``).

    Built once and cached in ``cfg.data_dir/corpus/`` (written atomically: a crash leaves no partial file);
    later calls read the cache.
    """
    passages_path, stats_path = corpus_paths(cfg)
    if passages_path.is_file() and stats_path.is_file():
        return _read_passages(passages_path)
    stats = CorpusStats(corpus=cfg.data.corpus, label=corpus_label(cfg))
    documents = shuffled(iter_documents(cfg, stats), cfg.seed, cfg.data.shuffle_buffer_docs)
    passages = build_passages(
        documents,
        corpus=cfg.data.corpus,
        n_sentences=cfg.data.n_sentences,
        sentences_per_passage=cfg.data.sentences_per_passage,
        min_words=cfg.data.min_sentence_words,
        max_words=cfg.data.max_sentence_words,
        stats=stats,
        progress=progress,
    )
    lines = "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in passages)
    write_text_atomic(passages_path, lines)
    write_text_atomic(stats_path, json.dumps(asdict(stats), indent=1))
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.dropped.items())) or "none"
    log.info(
        "corpus %s: %d passages, %d sentences; dropped %s",
        cfg.data.corpus, len(passages), stats.sentences_kept, dropped,
    )
    return passages


def load_corpus_stats(cfg: Config) -> CorpusStats:
    """Statistics of the profile's passages (builds them first if needed)."""
    _, stats_path = corpus_paths(cfg)
    if not stats_path.is_file():
        load_passages(cfg)
    raw = json.loads(stats_path.read_text())
    raw["passage_lengths"] = {int(k): v for k, v in raw["passage_lengths"].items()}
    return CorpusStats(**raw)


# Summaries for the data notebook ---------------------------------------------------------------------


def corpus_summary_table(stats: CorpusStats) -> pd.DataFrame:
    """What was read, dropped (by reason) and kept, one row per count."""
    import pandas as pd

    rows = [
        ("documents read", stats.documents_read),
        ("documents used", stats.documents_used),
        ("paragraphs", stats.paragraphs),
        ("sentences split (pySBD)", stats.sentences_split),
        *((f"lines skipped while reading: {k}", v) for k, v in sorted(stats.source_skipped.items())),
        *((f"sentences dropped: {k}", v) for k, v in sorted(stats.dropped.items())),
        ("sentences in passages", stats.sentences_kept),
        ("sentences requested (data.n_sentences)", stats.n_sentences_requested),
        ("passages", stats.passages),
        *((f"passages of {k} sentences", v) for k, v in sorted(stats.passage_lengths.items())),
    ]
    return pd.DataFrame(rows, columns=["count", "value"])


def splitter_demo(cases: Sequence[str] = TRICKY_CASES) -> pd.DataFrame:
    """The splitter on tricky cases (abbreviations, decimals, quotes): each case and its sentences."""
    import pandas as pd

    rows = [(case, " ‖ ".join(split_sentences(case))) for case in cases]
    return pd.DataFrame(rows, columns=["text", "sentences (pySBD, ‖ = boundary)"])

