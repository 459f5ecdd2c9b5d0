"""The records every stage passes on, and the literals and small parsers profiles are validated with: the leaf floor.

Nothing here reads a file or imports another brdlib module. A corpus :class:`Passage` is what the teacher reads
(:class:`TeacherItem`: one sentence of it) and what :mod:`brdlib.assemble` interleaves with the teacher's
:class:`BehaviourRecord` annotations; a downstream task input becomes a passage too (``protocols.InputPassage``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BEHAVIOURS", "KD_KINDS", "BehaviourRecord", "Document", "Passage", "TeacherItem", "parse_shard",
]

BEHAVIOURS: tuple[str, ...] = ("ner", "qra")
"""The teacher's two basic-reading behaviours (Table 1: named entities; Table 2: question raising and answering)."""

KD_KINDS: dict[str, str] = {
    "skd": "standard KD: token-level forward KL(p_teacher || q_student) over the full next-token distribution",
    "minillm": "MiniLLM-style KD: token-level reverse KL(q_student || p_teacher) on fixed text "
    "(not MiniLLM's policy-gradient optimisation on student samples)",
}
"""The KD baselines of the blind test (§4), by the name their students and table rows take."""


@dataclass(frozen=True)
class Passage:
    """k consecutive sentences of one document: the unit the teacher reads sentence by sentence."""

    passage_id: str  # stable: f"{corpus}-{doc_index:06d}-{k:03d}", doc_index in the source's own order
    doc_id: str
    sentences: tuple[str, ...]
    source: str  # e.g. "c4 (stand-in for CC-100)"


@dataclass(frozen=True)
class Document:
    """One document of a source: its index in the source's own order, an id, and its paragraphs."""

    index: int
    doc_id: str
    paragraphs: tuple[str, ...]


@dataclass(frozen=True)
class BehaviourRecord:
    """One teacher response to one sentence of one passage (the contract of issue 5)."""

    key: str  # hash of (model, template, decoding params, sentence)
    behaviour: str  # "ner" | "qra"
    passage_id: str
    sentence_index: int  # position of the sentence in its passage
    sentence: str
    response: str  # cleaned response text ("" if dropped)
    drop_reason: str | None  # None when kept; else "empty" | "repetition" | "echo" | "malformed"


@dataclass(frozen=True)
class TeacherItem:
    """One sentence to read, and where it sits (a corpus passage, or a downstream task input)."""

    passage_id: str
    sentence_index: int
    sentence: str


_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")



def parse_shard(shard: str | tuple[int, int]) -> tuple[int, int]:
    """``"i/N"`` (or ``(i, N)``) as a pair, with 0 <= i < N."""
    if isinstance(shard, tuple):
        i, n = shard
    else:
        m = _SHARD_RE.match(str(shard))
        if not m:
            raise ValueError(f"shard {shard!r} is not of the form i/N (e.g. 0/1, 3/8)")
        i, n = int(m[1]), int(m[2])
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n} is out of range: need N >= 1 and 0 <= i < N")
    return i, n
