"""Every artefact of a profile under ``data/<profile>/``: where it lives, how it is written, whether it is there.

    data/<profile>/corpus/        passages.jsonl, stats.json                     (brdlib.corpus)
    data/<profile>/teacher/       <role>-<model>-<fingerprint>/ JSONL shards      (brdlib.teacher)
    data/<profile>/passages/      <variant>/ dataset + card.json                 (brdlib.assemble, brdlib.protocols)
    data/<profile>/packed/        <key>/ packed training blocks                  (brdlib.packing)
    data/<profile>/checkpoints/   <student>/ while a student trains              (brdlib.train)
    data/<profile>/students/      <student>/ model, tokenizer, train_summary.json (brdlib.train)
    data/<profile>/eval/          predictions per model and split                (brdlib.evaluate)
    data/<profile>/protocols/     task data of the relaxed/supervised protocols  (brdlib.protocols)
    data/<profile>/analysis/      text probabilities of the cross-entropy study    (brdlib.cross_entropy)

Writes are atomic (a temporary name, then a rename): a crash mid-stage never leaves a half-written artefact that a
later run would take as finished. :func:`resolve_model` is the one rule that turns a model reference (a profile
role, a trained student's name, or a model spec) into what loads it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from brdlib.specs import classify_spec

if TYPE_CHECKING:
    from brdlib.config import Config

__all__ = [
    "ARTEFACT_OWNERS", "CARD_FILE", "FOLDERS", "SUMMARY_FILE", "Builder", "ModelRef", "StoreError", "artefact_dir",
    "check_name", "checkpoints_dir", "ensure", "is_trained", "load_card", "load_summary", "passages_dir",
    "register_builder", "resolve_model", "student_dir", "swap_into_place", "trained_students", "write_text_atomic",
]

Folder = Literal["corpus", "teacher", "passages", "packed", "checkpoints", "students", "eval", "protocols",
                 "analysis"]
FOLDERS: tuple[str, ...] = ("corpus", "teacher", "passages", "packed", "checkpoints", "students", "eval",
                            "protocols", "analysis")
"""The folders of ``data/<profile>/``, one per kind of artefact (see the module docstring for their owners)."""
SUMMARY_FILE = "train_summary.json"
"""Written last into a student's folder: its presence is what makes a student trained."""
CARD_FILE = "card.json"
"""A passage variant's card (counts, token statistics, fingerprint of its inputs)."""

_NAME_RE = re.compile(r"[A-Za-z0-9][\w.\-]*")


class StoreError(ValueError):
    """An artefact name that cannot be a folder, or a model reference that names nothing."""


def check_name(name: str, what: str = "artefact") -> str:
    """``name`` if it is a plain directory name (letters, digits, ``_ . -``), else a :class:`StoreError`."""
    if not _NAME_RE.fullmatch(name):
        raise StoreError(f"{what} name {name!r} is not a plain directory name (letters, digits, _ . -)")
    return name


def artefact_dir(cfg: Config, folder: Folder) -> Path:
    """``data/<profile>/<folder>``; ``folder`` is one of :data:`FOLDERS`."""
    if folder not in FOLDERS:
        raise StoreError(f"unknown artefact folder {folder!r}; accepted: {', '.join(FOLDERS)}")
    return cfg.data_dir / folder


def passages_dir(cfg: Config, name: str) -> Path:
    """Where a passage variant is saved: ``data/<profile>/passages/<name>``."""
    return artefact_dir(cfg, "passages") / check_name(name, "variant")


def student_dir(cfg: Config, name: str) -> Path:
    """Where a trained student is saved: ``data/<profile>/students/<name>`` (model, tokenizer, summary)."""
    return artefact_dir(cfg, "students") / check_name(name, "student")


def checkpoints_dir(cfg: Config, name: str) -> Path:
    """Where a student's checkpoints are written while it trains: ``data/<profile>/checkpoints/<name>``."""
    return artefact_dir(cfg, "checkpoints") / check_name(name, "student")


def is_trained(cfg: Config, name: str) -> bool:
    """Whether a finished student of this name exists (never for a name no student can have, e.g. a hub id)."""
    return bool(_NAME_RE.fullmatch(name)) and (student_dir(cfg, name) / SUMMARY_FILE).is_file()


def trained_students(cfg: Config) -> list[str]:
    """The names of this profile's finished students, sorted."""
    folder = artefact_dir(cfg, "students")
    return sorted(p.parent.name for p in folder.glob(f"*/{SUMMARY_FILE}")) if folder.is_dir() else []


def load_summary(cfg: Config, name: str) -> dict[str, Any]:
    """The training summary of a finished student (steps, losses, throughput, packing, log history)."""
    path = student_dir(cfg, name) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"student {name!r} is not trained ({path} missing); run notebook 03")
    return json.loads(path.read_text())


def load_card(cfg: Config, name: str) -> dict[str, Any]:
    """The card (counts and token statistics) of a saved passage variant."""
    path = passages_dir(cfg, name) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"passage variant {name!r} is not assembled ({path} missing); run notebook 02")
    return json.loads(path.read_text())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())  # the data is on disk before the name points at it: a crash leaves old or new
    tmp.replace(path)


def swap_into_place(tmp: Path, out: Path) -> None:
    """Replace the folder ``out`` by the finished folder ``tmp`` (the old one moved aside first, then removed)."""
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


@dataclass(frozen=True)
class ModelRef:
    """What a model reference resolves to: the spec that loads it and its identity for fingerprints."""

    spec: str  # a model spec or a directory: what brdlib.models.load_model takes
    identity: str  # "student:<name>:<fingerprint>", "dir:<fingerprint or path>", or "<kind>:<spec>"
    role: str | None = None  # the profile role it came from, if any


def resolve_model(cfg: Config, ref: str, roles: bool = True) -> ModelRef:
    """The one rule from a model reference to a model: a profile role (``teacher``, ``student``, a key of
    ``models.extra``; with ``roles``), else a trained student's name, else a model spec (a directory, an embedded
    model, ``tiny-random...``, a hub id). Anything else fails naming the roles, the trained students and the
    accepted spec forms."""
    if roles and ref in (named := cfg.models.roles()):
        return replace(resolve_model(cfg, named[ref], roles=False), role=ref)
    if is_trained(cfg, ref):
        return ModelRef(str(student_dir(cfg, ref)), f"student:{ref}:{load_summary(cfg, ref)['fingerprint']}")
    try:
        return ModelRef(ref, _identity(ref))
    except ValueError as err:
        role_list = f"not a role of profile {cfg.profile!r} ({', '.join(cfg.models.roles())}), " if roles else ""
        raise StoreError(f"model {ref!r} is {role_list}not a trained student "
                         f"({', '.join(trained_students(cfg)) or 'none yet'}) and not a model spec: {err}") from None


def _identity(spec: str) -> str:
    """A spec's identity for fingerprints: a directory by its training fingerprint (else its path), others by name."""
    resolved = classify_spec(spec)
    if resolved.kind == "local":
        summary = Path(resolved.source) / SUMMARY_FILE
        return f"dir:{json.loads(summary.read_text())['fingerprint'] if summary.is_file() else resolved.source}"
    return f"{resolved.kind}:{spec}"


# Build what is missing ---------------------------------------------------------------------------------------

ARTEFACT_OWNERS: dict[str, str] = {
    "teacher": "brdlib.teacher",    # teacher/<role>: the role's records for the profile's corpus
    "passages": "brdlib.assemble",  # passages/<variant>: a passage variant (brd, ori, no_sent, brd_frac0.5, ...)
    "students": "brdlib.train",     # students/<name>: a named student (brdlib.train.NAMED_STUDENTS)
}
"""The stage that builds each kind of artefact :func:`ensure` is asked for. Its module registers its builder
(:func:`register_builder`) when imported, and :func:`ensure` imports it by this name when nothing is registered
yet: the store stays below the stages, which it never imports by a plain import."""
Builder = Callable[["Config", list[str], bool], None]
"""``builder(cfg, names, progress)``: build (or reuse, or resume) the named artefacts of one folder."""
_BUILDERS: dict[str, Builder] = {}


def register_builder(folder: str, builder: Builder) -> None:
    """Make ``builder`` the one that builds ``folder``'s artefacts (called by the owning stage, at import)."""
    if folder not in ARTEFACT_OWNERS:
        raise StoreError(f"no artefact of folder {folder!r} is built on demand; accepted: {', '.join(ARTEFACT_OWNERS)}")
    _BUILDERS[folder] = builder


def ensure(cfg: Config, *artefacts: str, progress: bool = True) -> None:
    """Build whatever of ``artefacts`` is missing through the stage that owns it, so any notebook or command runs
    on its own on a fresh output root: ``ensure(cfg, "passages/brd", "students/further", "teacher/teacher")``.

    A passage variant counts as present when its card is; teacher records and students go to their owner every
    time, which reuses what is up to date, resumes what is unfinished and rebuilds what is stale."""
    wanted: dict[str, list[str]] = {}
    for artefact in artefacts:
        folder, _, name = artefact.partition("/")
        if folder not in ARTEFACT_OWNERS or not name:
            raise StoreError(f"cannot ensure {artefact!r}: give '<folder>/<name>' with folder one of "
                             f"{', '.join(ARTEFACT_OWNERS)}")
        wanted.setdefault(folder, []).append(check_name(name, folder))
    for folder, names in wanted.items():
        if folder == "passages":
            names = [n for n in names if not (passages_dir(cfg, n) / CARD_FILE).is_file()]
        if names:
            if folder not in _BUILDERS:
                importlib.import_module(ARTEFACT_OWNERS[folder])  # registers its builder
            _BUILDERS[folder](cfg, list(dict.fromkeys(names)), progress)
