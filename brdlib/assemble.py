"""The BRD training passages (§3.2) and every ablation variant, saved as Hugging Face datasets.

    from brdlib.assemble import assemble_variant, load_variant
    path = assemble_variant(cfg, "brd")           # cfg.data_dir/passages/brd (+ card.json)
    ds = load_variant(cfg, "brd")                  # datasets.Dataset with a 'text' column

For a passage of sentences s1, s2, s3 and the teacher's annotations of each sentence:

- D_ORI: ``s1 <sep> s2 <sep> s3``;
- D_NER: ``s1 <sep> NER(s1) <sep> s2 <sep> NER(s2) <sep> s3 <sep> NER(s3)``;
- D_QRA: likewise with the question raising and answering response;
- D_TRAIN (variant ``brd``): the three mixed and shuffled with ``cfg.seed``.

``<sep>`` is ``passages.sep`` verbatim (default ``" <sep> "``, a literal string), or the student tokenizer's
eos token when it is ``"eos"``. A sentence whose annotation was dropped by the teacher stage (or is missing)
stays in the passage and only its annotation, with the ``<sep>`` before it, is left out; an annotated passage
none of whose sentences has an annotation would equal its D_ORI passage, so it is skipped. Both are counted
in the variant's card.

Variants (:data:`VARIANTS`): ``brd``; ``ori``, ``ner``, ``qra`` (one passage type each; ``ori`` is the
FURTHER student's data); ``no_ner`` and ``no_qra`` (Table 8); ``no_sent`` (A.6: QRA items that ask about
attitude or sentiment, or whose answer contains positive/negative/neutral, are dropped); ``sentence_level``
(Table 7: each sentence alone, and each sentence with one annotation, as separate units in shuffled order);
``brd_frac<f>`` (Fig. 2: the first share ``f`` of a seeded permutation of the source passages, so smaller
subsets are nested in larger ones).

Each variant is written to ``cfg.data_dir/passages/<name>`` with :meth:`datasets.Dataset.save_to_disk` and a
``card.json`` of counts and token statistics; the directory is built under a temporary name and renamed into
place when complete, and a rebuild happens only when the inputs (passages, behaviours, sep, seed, student
tokenizer) change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from brdlib.corpus import load_passages
from brdlib.embedded import tokenizer_dir
from brdlib.models import pretrained_tokenizer, resolve_spec, tiny_tokenizer
from brdlib.records import BEHAVIOURS, BehaviourRecord, Passage
from brdlib.store import CARD_FILE, artefact_dir, load_card, passages_dir, register_builder, swap_into_place
from brdlib.teacher import load_behaviours, run_teacher

if TYPE_CHECKING:
    import datasets
    import pandas as pd
    from matplotlib.figure import Figure
    from transformers import PreTrainedTokenizerBase

    from brdlib.config import Config

__all__ = [
    "ASSEMBLE_FORMAT_VERSION", "ATTITUDE_QUESTION_RE", "KINDS", "PAPER_FORMATS", "POLARITY_ANSWER_RE", "SEP_EOS",
    "VARIANTS", "AnnotationIndex", "AssembleError", "AssemblyCounts", "VariantSpec", "all_variant_names",
    "assemble_all", "assemble_variant", "build_rows", "build_variants", "cards_table", "choose_passages", "compose",
    "encode_passages", "index_behaviours", "inputs_fingerprint", "is_sentiment_qra", "load_variant",
    "passage_examples", "resolve_sep", "save_variant", "size_variant_name", "size_variant_names",
    "split_question_answer", "student_tokenizer", "teacher_behaviours", "token_length_figure", "token_stats",
    "variant_spec",
]

log = logging.getLogger(__name__)

ASSEMBLE_FORMAT_VERSION = 1
"""Bump when the passage format changes, so older saved variants are rebuilt."""

KINDS: tuple[str, ...] = ("ori", "ner", "qra")
SEP_EOS = "eos"

PAPER_FORMATS: dict[str, str] = {
    "ori": "s1 <sep> s2 <sep> s3",
    "ner": "s1 <sep> NER(s1) <sep> s2 <sep> NER(s2) <sep> s3 <sep> NER(s3)",
    "qra": "s1 <sep> QRA(s1) <sep> s2 <sep> QRA(s2) <sep> s3 <sep> QRA(s3)",
}
"""The paper's description of each passage type (§3.2), for notebook 02."""


class AssembleError(ValueError):
    """Inputs that cannot be assembled: an unknown variant, or behaviours that do not match the passages."""


# Variants ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantSpec:
    """What one variant keeps: passage types, unit (passage or sentence), filters and share of passages."""

    name: str
    kinds: tuple[str, ...]
    description: str
    unit: Literal["passage", "sentence"] = "passage"
    drop_sentiment: bool = False
    fraction: float = 1.0


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in [
        VariantSpec("brd", KINDS, "full BRD: D_TRAIN, the shuffled mix of D_ORI, D_NER and D_QRA (§3.2)"),
        VariantSpec("ori", ("ori",), "D_ORI only: the FURTHER student's data (Table 3)"),
        VariantSpec("ner", ("ner",), "D_NER only"),
        VariantSpec("qra", ("qra",), "D_QRA only"),
        VariantSpec("no_ner", ("ori", "qra"), "-NER: D_TRAIN without D_NER (Table 8)"),
        VariantSpec("no_qra", ("ori", "ner"), "-QRA: D_TRAIN without D_QRA (Table 8)"),
        VariantSpec(
            "no_sent", KINDS, "-SentData: D_TRAIN without sentiment-related QRA items (A.6, Table 12)",
            drop_sentiment=True,
        ),
        VariantSpec(
            "sentence_level", KINDS,
            "sentence level: sentence and sentence-plus-annotation units, no passage order (Table 7)",
            unit="sentence",
        ),
    ]
}
_FRACTION_RE = re.compile(r"^brd_frac(0?\.\d+|1(?:\.0*)?)$")


def size_variant_name(fraction: float) -> str:
    """Name of the data-size variant keeping ``fraction`` of the source passages (1.0 is ``brd``)."""
    if not 0 < fraction <= 1:
        raise AssembleError(f"a data-size fraction must lie in (0, 1]; got {fraction}")
    return "brd" if fraction == 1 else f"brd_frac{fraction:g}"


def size_variant_names(cfg: Config) -> list[str]:
    """The data-size variants of the profile (``passages.size_fractions``), smallest first."""
    return [size_variant_name(f) for f in cfg.passages.size_fractions]


def variant_spec(name: str) -> VariantSpec:
    """The spec of a variant name; an unknown name fails listing the accepted ones."""
    if name in VARIANTS:
        return VARIANTS[name]
    if m := _FRACTION_RE.match(name):
        fraction = float(m.group(1))
        if fraction == 1:
            return VARIANTS["brd"]
        return VariantSpec(name, KINDS, f"full BRD on {fraction:.0%} of the source passages (Fig. 2)",
                           fraction=fraction)
    raise AssembleError(
        f"unknown passage variant {name!r}; accepted: {', '.join(VARIANTS)}, or brd_frac<f> with 0 < f <= 1 "
        "(e.g. brd_frac0.25)"
    )


# The -SentData filter (A.6) ------------------------------------------------------------------------------

ATTITUDE_QUESTION_RE = re.compile(r"\b(attitudes?|sentiments?)\b", re.IGNORECASE)
"""A question 'about the attitude' (the Table 2 prompt's word; 'sentiment' is its synonym)."""
POLARITY_ANSWER_RE = re.compile(r"\b(positive|negative|neutral)\w*", re.IGNORECASE)
"""An answer 'containing words of positive/negative/neutral' (A.6), inflections included (negatively)."""
_ANSWER_SPLIT_RE = re.compile(r"\banswer\s*:", re.IGNORECASE)


def split_question_answer(response: str) -> tuple[str, str]:
    """Split a QRA response at its first 'Answer:'; without one, the whole text is both."""
    parts = _ANSWER_SPLIT_RE.split(response, maxsplit=1)
    if len(parts) == 2:
        return parts[0], parts[1]
    return response, response


def is_sentiment_qra(response: str) -> bool:
    """True for a QRA item the −SentData variant drops: an attitude question or a polarity word in the answer."""
    question, answer = split_question_answer(response)
    return bool(ATTITUDE_QUESTION_RE.search(question) or POLARITY_ANSWER_RE.search(answer))


# Composing passages --------------------------------------------------------------------------------------


def resolve_sep(sep: str, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The separator string: ``sep`` verbatim, or the tokenizer's eos token for ``'eos'``."""
    if sep != SEP_EOS:
        if not sep:
            raise AssembleError("passages.sep is empty; accepted: a non-empty string or 'eos'")
        return sep
    if tokenizer is None or not tokenizer.eos_token:
        raise AssembleError("passages.sep='eos' needs the student tokenizer, and it must define an eos token")
    return str(tokenizer.eos_token)


def compose(parts: Sequence[str], sep: str) -> str:
    """Join the parts of one unit with the separator (``s1 <sep> NER(s1) <sep> s2 ...``)."""
    return sep.join(p.strip() for p in parts)


@dataclass
class AnnotationIndex:
    """Kept teacher responses by (passage_id, sentence_index, behaviour), and what was not kept."""

    kept: dict[tuple[str, int, str], str]
    dropped: Counter
    """(behaviour, reason) -> count; reason 'empty response' for a kept record with an empty response."""
    records: int

    def get(self, passage_id: str, index: int, behaviour: str) -> str | None:
        return self.kept.get((passage_id, index, behaviour))


def index_behaviours(behaviours: Iterable[BehaviourRecord], passages: Sequence[Passage]) -> AnnotationIndex:
    """Check each record against its passage and index the kept responses.

    A record of an unknown behaviour, of a sentence index outside its passage, or whose sentence text differs
    from the passage's (stale teacher output) fails with the record's key; records of passages not in
    ``passages`` are counted as 'passage not in corpus' and ignored.
    """
    by_id = {p.passage_id: p for p in passages}
    kept: dict[tuple[str, int, str], str] = {}
    dropped: Counter = Counter()
    n = 0
    for rec in behaviours:
        n += 1
        if rec.behaviour not in BEHAVIOURS:
            raise AssembleError(
                f"behaviour record {rec.key!r} has behaviour {rec.behaviour!r}; accepted: {', '.join(BEHAVIOURS)}"
            )
        passage = by_id.get(rec.passage_id)
        if passage is None:
            dropped[(rec.behaviour, "passage not in corpus")] += 1
            continue
        if not 0 <= rec.sentence_index < len(passage.sentences):
            raise AssembleError(
                f"behaviour record {rec.key!r}: sentence_index {rec.sentence_index} is outside passage "
                f"{rec.passage_id!r} of {len(passage.sentences)} sentences"
            )
        if rec.sentence.strip() != passage.sentences[rec.sentence_index].strip():
            raise AssembleError(
                f"behaviour record {rec.key!r}: its sentence {rec.sentence[:60]!r} is not sentence "
                f"{rec.sentence_index} of passage {rec.passage_id!r} "
                f"({passage.sentences[rec.sentence_index][:60]!r}); the teacher output is stale, re-run stage 01"
            )
        if rec.drop_reason is not None:
            dropped[(rec.behaviour, rec.drop_reason)] += 1
            continue
        if not rec.response.strip():
            dropped[(rec.behaviour, "empty response")] += 1
            continue
        key = (rec.passage_id, rec.sentence_index, rec.behaviour)
        if key in kept and kept[key] != rec.response.strip():
            raise AssembleError(f"two different {rec.behaviour} responses for {key}; the teacher output is corrupt")
        kept[key] = rec.response.strip()
    return AnnotationIndex(kept, dropped, n)


def _row(text: str, kind: str, passage: Passage, sentence_index: int, n_sentences: int,
         n_annotations: int) -> dict[str, Any]:
    return {
        "text": text,
        "kind": kind,
        "passage_id": passage.passage_id,
        "doc_id": passage.doc_id,
        "sentence_index": sentence_index,  # -1 for a whole passage
        "n_sentences": n_sentences,
        "n_annotations": n_annotations,
    }


def choose_passages(passages: Sequence[Passage], fraction: float, seed: int) -> list[Passage]:
    """The first ``fraction`` (at least one) of a seeded permutation of the passages, in corpus order.

    The permutation depends only on the seed and the passage ids, so a smaller share is a subset of a larger one.
    """
    if fraction >= 1:
        return list(passages)
    order = sorted(p.passage_id for p in passages)
    random.Random(seed).shuffle(order)
    chosen = set(order[: max(1, round(fraction * len(order)))])
    return [p for p in passages if p.passage_id in chosen]


@dataclass
class AssemblyCounts:
    """What went into a variant and what was left out, by kind (nothing is left out silently).

    ``annotations_absent`` counts sentences of the chosen passages without a kept annotation, whether the
    teacher stage dropped it (its reasons are in the card's ``teacher_dropped``) or never produced it.
    """

    source_passages: int = 0
    sentences: int = 0
    annotations_used: Counter = field(default_factory=Counter)
    annotations_absent: Counter = field(default_factory=Counter)
    annotations_filtered_sentiment: int = 0
    units_skipped_no_annotation: Counter = field(default_factory=Counter)


def build_rows(
    passages: Sequence[Passage],
    annotations: AnnotationIndex,
    spec: VariantSpec,
    sep: str,
    seed: int,
) -> tuple[list[dict[str, Any]], AssemblyCounts]:
    """The variant's units (one dict per row, 'text' first), shuffled with ``seed``, and their counts."""
    chosen = choose_passages(passages, spec.fraction, seed)
    counts = AssemblyCounts(source_passages=len(chosen))
    rows: list[dict[str, Any]] = []
    for passage in chosen:
        sentences = [s.strip() for s in passage.sentences]
        counts.sentences += len(sentences)
        for kind in spec.kinds:
            if kind == "ori":
                if spec.unit == "passage":
                    rows.append(_row(compose(sentences, sep), "ori", passage, -1, len(sentences), 0))
                else:
                    rows.extend(_row(s, "ori", passage, i, 1, 0) for i, s in enumerate(sentences))
                continue
            notes: list[str | None] = []
            for i in range(len(sentences)):
                note = annotations.get(passage.passage_id, i, kind)
                if note is None:
                    counts.annotations_absent[kind] += 1
                elif spec.drop_sentiment and kind == "qra" and is_sentiment_qra(note):
                    counts.annotations_filtered_sentiment += 1
                    note = None
                notes.append(note)
            counts.annotations_used[kind] += sum(n is not None for n in notes)
            if spec.unit == "passage":
                if all(n is None for n in notes):
                    counts.units_skipped_no_annotation[kind] += 1
                    continue
                parts = [x for s, n in zip(sentences, notes, strict=True) for x in (s, n) if x is not None]
                rows.append(_row(compose(parts, sep), kind, passage, -1, len(sentences),
                                 sum(n is not None for n in notes)))
            else:
                for i, (s, n) in enumerate(zip(sentences, notes, strict=True)):
                    if n is None:
                        counts.units_skipped_no_annotation[kind] += 1
                        continue
                    rows.append(_row(compose([s, n], sep), kind, passage, i, 1, 1))
    random.Random(seed).shuffle(rows)
    return rows, counts


# Tokens ------------------------------------------------------------------------------------------------


def encode_passages(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as it is trained on: the tokenizer's own special tokens, then eos at the end.

    The eos token closes every passage, so passages packed into one block stay delimited.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise AssembleError(f"the tokenizer {type(tokenizer).__name__} has no eos token to close passages with")
    if not texts:
        return []
    encoded = tokenizer(list(texts))["input_ids"]
    return [ids if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]


def token_stats(lengths: Sequence[int]) -> dict[str, float | int]:
    """Count, total, mean, median, 95th percentile and maximum of token lengths."""
    import numpy as np

    if not lengths:
        return {"units": 0, "tokens": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0}
    arr = np.asarray(lengths)
    return {
        "units": int(arr.size),
        "tokens": int(arr.sum()),
        "mean": round(float(arr.mean()), 1),
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
    }


def student_tokenizer(cfg: Config) -> PreTrainedTokenizerBase:
    """The profile's student tokenizer, without loading the model's weights."""

    resolved = resolve_spec(cfg.models.student)
    if resolved.kind == "tiny-random":
        return tiny_tokenizer()
    if resolved.kind == "embedded":

        return pretrained_tokenizer(str(tokenizer_dir(resolved.source)))
    return pretrained_tokenizer(resolved.source)


# Saving, loading, idempotence ----------------------------------------------------------------------------


def inputs_fingerprint(
    passages: Sequence[Passage], annotations: AnnotationIndex, spec: VariantSpec, sep: str, seed: int,
    tokenizer_name: str,
) -> str:
    """Hash of everything a variant is built from; a saved variant with another fingerprint is stale."""
    h = hashlib.sha256()
    head = {"v": ASSEMBLE_FORMAT_VERSION, "spec": spec.__dict__, "sep": sep, "seed": seed, "tok": tokenizer_name}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for p in passages:
        h.update(json.dumps([p.passage_id, p.doc_id, list(p.sentences)]).encode())
    for key in sorted(annotations.kept):
        h.update(json.dumps([*key, annotations.kept[key]]).encode())
    return h.hexdigest()[:16]


def load_variant(cfg: Config, name: str) -> datasets.Dataset:
    """A saved variant as a :class:`datasets.Dataset` (columns: text, kind, passage_id, ..., n_tokens)."""
    import datasets

    load_card(cfg, name)  # a clear error when missing
    return datasets.load_from_disk(str(passages_dir(cfg, name)))


def _card(name: str, spec: VariantSpec, sep: str, seed: int, tokenizer_name: str, fingerprint: str,
          rows: list[dict[str, Any]], counts: AssemblyCounts, annotations: AnnotationIndex,
          teacher_role: str) -> dict[str, Any]:
    by_kind = {k: [r["n_tokens"] for r in rows if r["kind"] == k] for k in KINDS}
    total_tokens = sum(r["n_tokens"] for r in rows)
    dropped = {f"{b}: {reason}": n for (b, reason), n in sorted(annotations.dropped.items())}
    return {
        "variant": name,
        "spec": spec.name,
        "description": spec.description,
        "unit": spec.unit,
        "kinds": list(spec.kinds),
        "fraction": spec.fraction,
        "sep": sep,
        "seed": seed,
        "teacher_role": teacher_role,
        "tokenizer": tokenizer_name,
        "fingerprint": fingerprint,
        "format_version": ASSEMBLE_FORMAT_VERSION,
        "rows": len(rows),
        "rows_by_kind": {k: len(v) for k, v in by_kind.items() if k in spec.kinds},
        "source_passages": counts.source_passages,
        "sentences": counts.sentences,
        "annotations_used": dict(counts.annotations_used),
        "annotations_absent": dict(counts.annotations_absent),
        "annotations_filtered_sentiment": counts.annotations_filtered_sentiment,
        "units_skipped_no_annotation": dict(counts.units_skipped_no_annotation),
        "teacher_records": annotations.records,
        "teacher_dropped": dropped,
        "tokens": token_stats([r["n_tokens"] for r in rows]),
        "tokens_by_kind": {k: token_stats(v) for k, v in by_kind.items() if k in spec.kinds},
        "token_share_by_kind": {
            k: round(sum(v) / total_tokens, 4) if total_tokens else 0.0 for k, v in by_kind.items() if k in spec.kinds
        },
    }


def assemble_variant(
    cfg: Config,
    variant: str,
    *,
    passages: Sequence[Passage] | None = None,
    behaviours: Iterable[BehaviourRecord] | None = None,
    teacher_role: str = "teacher",
    name: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    force: bool = False,
) -> Path:
    """Build variant ``variant`` and save it under ``passages/<name>`` (default: the variant's name).

    ``passages`` default to the profile's corpus (:func:`brdlib.corpus.load_passages`) and ``behaviours`` to the
    teacher stage's output for ``teacher_role`` (:func:`brdlib.teacher.load_behaviours`); pass your own to
    assemble, e.g., passages of task inputs. A saved variant built from the same inputs is reused.
    """
    spec = variant_spec(variant)
    name = name or variant
    out = passages_dir(cfg, name)
    if passages is None:

        passages = load_passages(cfg)
    if behaviours is None:

        behaviours = load_behaviours(cfg, teacher_role, passages=passages)
    tokenizer = tokenizer or student_tokenizer(cfg)
    sep = resolve_sep(cfg.passages.sep, tokenizer)
    annotations = index_behaviours(behaviours, passages)
    tokenizer_name = f"{type(tokenizer).__name__}:{tokenizer.name_or_path or cfg.models.student}:{len(tokenizer)}"
    fingerprint = inputs_fingerprint(passages, annotations, spec, sep, cfg.seed, tokenizer_name)
    card_path = out / CARD_FILE
    if not force and card_path.is_file() and json.loads(card_path.read_text()).get("fingerprint") == fingerprint:
        log.info("passage variant %s is up to date: %s", name, out)
        return out

    rows, counts = build_rows(passages, annotations, spec, sep, cfg.seed)
    for row, ids in zip(rows, encode_passages(tokenizer, [r["text"] for r in rows]), strict=True):
        row["n_tokens"] = len(ids)
    card = _card(name, spec, sep, cfg.seed, tokenizer_name, fingerprint, rows, counts, annotations, teacher_role)
    save_variant(rows, card, out)
    log.info("passage variant %s: %d rows, %d tokens -> %s", name, card["rows"], card["tokens"]["tokens"], out)
    return out


_COLUMNS = ("text", "kind", "passage_id", "doc_id", "sentence_index", "n_sentences", "n_annotations", "n_tokens")


def save_variant(rows: list[dict[str, Any]], card: dict[str, Any], out: Path) -> None:
    """Write a variant's dataset and its card to a temporary folder, then swap it into place (a crash leaves the
    previous variant or none, never a half-written one). The one writer of the passage format (protocols too)."""
    import datasets

    columns = {c: [r[c] for r in rows] for c in _COLUMNS}
    features = datasets.Features({
        "text": datasets.Value("string"), "kind": datasets.Value("string"),
        "passage_id": datasets.Value("string"), "doc_id": datasets.Value("string"),
        "sentence_index": datasets.Value("int32"), "n_sentences": datasets.Value("int32"),
        "n_annotations": datasets.Value("int32"), "n_tokens": datasets.Value("int32"),
    })
    ds = datasets.Dataset.from_dict(columns, features=features)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp))
    (tmp / CARD_FILE).write_text(json.dumps(card, indent=1))
    swap_into_place(tmp, out)


def all_variant_names(cfg: Config) -> list[str]:
    """Every named variant, then the profile's data-size subsets."""
    return list(dict.fromkeys([*VARIANTS, *size_variant_names(cfg)]))


def teacher_behaviours(cfg: Config, passages: Sequence[Passage], teacher_role: str = "teacher",
                       generate_missing: bool = True) -> list[BehaviourRecord]:
    """The teacher stage's records for ``passages``; with ``generate_missing``, whatever stage 01 has not produced
    yet is generated first (:func:`brdlib.teacher.run_teacher` reuses every finished record), so a stage run on
    its own still finds its inputs."""

    if generate_missing:
        run_teacher(cfg, passages, teacher_role)
    return list(load_behaviours(cfg, teacher_role, passages=passages))


def assemble_all(
    cfg: Config,
    variants: Sequence[str] | None = None,
    *,
    passages: Sequence[Passage] | None = None,
    behaviours: Iterable[BehaviourRecord] | None = None,
    teacher_role: str = "teacher",
    generate_missing: bool = True,
) -> list[dict[str, Any]]:
    """Assemble ``variants`` (default: :func:`all_variant_names`); return their cards.

    ``passages`` default to the profile's corpus and ``behaviours`` to :func:`teacher_behaviours`.
    """
    from tqdm.auto import tqdm

    if passages is None:

        passages = load_passages(cfg)
    if behaviours is None:
        behaviours = teacher_behaviours(cfg, passages, teacher_role, generate_missing)
    behaviours = list(behaviours)
    names = list(variants) if variants is not None else all_variant_names(cfg)
    tokenizer = student_tokenizer(cfg)
    cards = []
    for name in tqdm(names, desc="assembling variants"):
        assemble_variant(cfg, name, passages=passages, behaviours=behaviours, teacher_role=teacher_role,
                         tokenizer=tokenizer)
        cards.append(load_card(cfg, name))
    return cards


def build_variants(cfg: Config, names: list[str], progress: bool = True) -> None:
    """The store's builder of ``passages/<variant>`` (:func:`brdlib.store.ensure`): assemble these variants, the
    teacher first reading whatever sentences it has not read yet."""
    for name in names:
        try:
            variant_spec(name)
        except AssembleError:
            folder = artefact_dir(cfg, "passages")
            present = sorted(p.name for p in folder.glob("[!.]*")) if folder.is_dir() else []
            raise AssembleError(f"passage variant {name!r} is neither assembled ({', '.join(present) or 'none yet'}) "
                                f"nor a known variant ({', '.join(VARIANTS)}, brd_frac<f>)") from None
    assemble_all(cfg, names)


register_builder("passages", build_variants)


# Tables and figures for notebook 02 ----------------------------------------------------------------------


def passage_examples(
    passages: Sequence[Passage], behaviours: Iterable[BehaviourRecord], sep: str, max_sentences: int = 3,
) -> pd.DataFrame:
    """One example of each passage type, beside the paper's description: the first passage whose first
    ``max_sentences`` sentences all carry both annotations (else the one with the most), cut to those sentences."""
    import pandas as pd

    index = index_behaviours(behaviours, passages)

    def annotated(p: Passage) -> int:
        n = min(max_sentences, len(p.sentences))
        return sum(index.get(p.passage_id, i, b) is not None for i in range(n) for b in BEHAVIOURS)

    if not passages:
        raise AssembleError("no passages to take an example from")
    best = max(passages, key=annotated)  # max keeps the first of ties, i.e. corpus order
    cut = Passage(best.passage_id, best.doc_id, tuple(best.sentences[:max_sentences]), best.source)
    rows, _ = build_rows([cut], index, VARIANTS["brd"], sep, seed=0)
    text = {r["kind"]: r["text"] for r in rows}
    return pd.DataFrame([
        {"passage type": f"D_{k.upper()}", "paper (§3.2)": PAPER_FORMATS[k], "ours": text.get(k, "(no annotation)")}
        for k in KINDS
    ])


def cards_table(cards: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per variant: units by type, source passages, tokens, token share by type, what was left out."""
    import pandas as pd

    rows = []
    for c in cards:
        row: dict[str, Any] = {"variant": c["variant"], "unit": c["unit"], "source passages": c["source_passages"],
                               "rows": c["rows"]}
        for k in KINDS:
            row[f"{k} rows"] = c["rows_by_kind"].get(k, 0)
        row["tokens"] = c["tokens"]["tokens"]
        row["mean tokens/row"] = c["tokens"]["mean"]
        row["max tokens/row"] = c["tokens"]["max"]
        for k in KINDS:
            row[f"{k} token share"] = c["token_share_by_kind"].get(k, 0.0)
        row["annotations used"] = sum(c["annotations_used"].values())
        row["annotations absent"] = sum(c["annotations_absent"].values())
        row["sentiment QRA dropped"] = c["annotations_filtered_sentiment"]
        rows.append(row)
    return pd.DataFrame(rows)


def token_length_figure(cfg: Config, variant: str = "brd") -> Figure:
    """Token lengths of a variant's units by passage type (box plot), against the training block length."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = load_variant(cfg, variant).select_columns(["kind", "n_tokens"]).to_pandas()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    sns.boxplot(data=df, x="n_tokens", y="kind", order=[k for k in KINDS if k in set(df["kind"])], ax=ax)
    block = cfg.train.max_length
    ax.axvline(block, color="grey", ls="--", lw=1, label=f"training block: {block} tokens")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("tokens per unit (student tokenizer, eos included)")
    ax.set_ylabel("passage type")
    ax.set_title(f"Token lengths of {variant!r} by passage type ({cfg.profile})", fontsize=11)
    return fig
