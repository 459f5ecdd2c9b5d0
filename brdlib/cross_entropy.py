"""Teacher-student cross-entropy before and after BRD (Table 5, §5.2; notebook 07).

    from brdlib import cross_entropy as ce
    texts = ce.cross_entropy_texts(cfg, {"student_base": "student", "brd": "brd"})   # per text: p, q
    table = ce.cross_entropy_table(cfg, texts)                                       # role, task, value, n

**Table 5, our reading of §5.2.** The paper computes ``-sum_{i=1..N} p(y_i) log q(y'_i)`` over the N texts of a
task, where ``y`` and ``y'`` are the teacher's and the student's tokenizations of the same text and p, q are
"sequence-level probabilities averaged over y and y'". We read:

* a *text* is one task instance: its Table 9 prompt followed by its gold answer, scored from the start of the
  text, conditioned only on the tokens training puts before a text (the tokenizer's start tokens, XGLM's ``</s>``;
  for a tokenizer with none, the end-of-text token; ``eval.special_tokens``, ``brdlib.scoring``'s docstring), and
  in lm-eval's rolling windows where it is longer than the model's positions;
  ``analysis.cross_entropy_text: candidates`` takes instead each candidate answer given the prompt;
* p (q) is the *arithmetic mean of the per-token probabilities* of that text under the teacher's (student's)
  tokenizer; ``analysis.cross_entropy_average: geometric`` takes ``exp(mean log-prob)`` instead;
* the sum runs over the texts **without normalising** p or q over candidates or over texts. The paper's
  magnitudes support this: its values grow with the test-set sizes (CB, 56 texts: 13.2; RTE, 277: 64.8; XNLI,
  5,010: 461.7; BoolQ, 3,270: 1,098.7), i.e. 0.06-0.5 per text, as ``p * -log q`` with p, q in (0, 1) gives.
  Normalising over an example's candidates would give at least ~log 2-log 3 per example (more than 0.09 per
  XNLI example), and normalising over the N texts would give about ``log N`` per task (8.5 for XNLI, not 462).

So sums are comparable only between models on the same texts (ours against the paper's only through the relative
change; our n is far smaller). BIG-bench-Avg is the mean of the per-task sums over the BIG-bench tasks, as §5.2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from brdlib.blind import BLIND_ROLES
from brdlib.config import Config
from brdlib.evaluate import BIGBENCH_AVG, bootstrap_ci
from brdlib.models import free_memory, load_ref, model_label
from brdlib.report import compare_with_paper, paper_rows
from brdlib.scoring import TextProbCache, text_probs
from brdlib.store import artefact_dir
from brdlib.tasks import gold_label, load_examples, stratified_sample, task_names

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "CrossEntropyError", "ce_pairs", "cross_entropy", "cross_entropy_difference", "cross_entropy_examples",
    "cross_entropy_figure", "cross_entropy_table", "cross_entropy_texts", "table5",
]

log = logging.getLogger(__name__)


class CrossEntropyError(ValueError):
    """A cross-entropy request that cannot run (named, with what is accepted)."""


def cross_entropy(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """``-sum_i p_i log q_i`` over texts (§5.2), p the teacher's and q the student's sequence probabilities,
    neither normalised (see the module docstring). Lower means the student is closer to the teacher."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise CrossEntropyError(f"p and q must be over the same texts; got {p.size} and {q.size} values")
    if np.any(q <= 0) or np.any(q > 1) or np.any(p < 0) or np.any(p > 1):
        raise CrossEntropyError("p must lie in [0, 1] and q in (0, 1]: they are sequence probabilities")
    return float(-(p * np.log(q)).sum())


def ce_pairs(example: Any, text: Literal["instance", "candidates"] = "instance") -> list[tuple[str, str]]:
    """The (context, text) pairs of one example for Table 5: ``instance`` is the prompt with its gold answer as one
    text from the start; ``candidates`` is each candidate given the prompt."""
    if text == "instance":
        return [("", example.prompt + example.continuations[example.gold])]
    if text == "candidates":
        return [(example.prompt, c) for c in example.continuations]
    raise CrossEntropyError(f"unknown cross-entropy text {text!r}; accepted: 'instance', 'candidates'")


def cross_entropy_examples(cfg: Config, tasks: Sequence[str] | None = None) -> dict[str, list[Any]]:
    """Each task's test examples for Table 5: up to ``analysis.cross_entropy_max_examples`` random (label-
    stratified, seeded) instances per BIG-bench task, ``analysis.cross_entropy_max_examples_main`` per other task."""

    a = cfg.analysis
    out = {}
    for task in tasks if tasks is not None else task_names(cfg):
        cap = a.cross_entropy_max_examples if task.startswith("bigbench:") else a.cross_entropy_max_examples_main
        out[task] = stratified_sample(load_examples(cfg, task, "test"), cap, cfg.data.split_seed, gold_label)
    return out


def cross_entropy_texts(cfg: Config, roles: Mapping[str, str] = BLIND_ROLES, teacher: str = "teacher",
                        tasks: Sequence[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Per text: the teacher's p and each role's q (``q_<role>``), with token counts, for Table 5.

    ``roles`` maps a row name to a model reference (:func:`brdlib.store.resolve_model`); ``teacher`` is the
    reference of p. Each model is loaded once; its text probabilities are cached under ``data/<profile>/analysis``.
    """
    import pandas as pd

    by_task = cross_entropy_examples(cfg, tasks)
    kind = cfg.analysis.cross_entropy_text
    rows, pairs = [], []
    for task, examples in by_task.items():
        for ex in examples:
            for j, pair in enumerate(ce_pairs(ex, kind)):
                rows.append({"task": task, "example_id": ex.example_id, "text": j})
                pairs.append(pair)
    frame = pd.DataFrame(rows, columns=["task", "example_id", "text"])
    cache = TextProbCache(artefact_dir(cfg, "analysis") / "text_probs.sqlite")
    average = cfg.analysis.cross_entropy_average
    try:
        for column, ref in [("teacher", teacher), *roles.items()]:
            loaded = load_ref(cfg, ref)
            log.info("Table 5: %d texts with %s (%s)", len(pairs), column, loaded.spec)
            probs = text_probs(loaded.model, loaded.tokenizer, pairs, cache, cfg.eval.batch_size, progress,
                               special_tokens=cfg.eval.special_tokens, max_length=cfg.eval.max_length)
            name = "p" if column == "teacher" else f"q_{column}"
            frame[name] = [p.sequence_prob(average) for p in probs]
            frame[f"n_tokens_{column}"] = [p.n_tokens for p in probs]
            frame.attrs.setdefault("models", {})[column] = model_label(loaded)
            del loaded
            free_memory()
    finally:
        cache.close()
    frame.attrs.update(average=average, text=kind, special_tokens=cfg.eval.special_tokens)
    return frame


def cross_entropy_table(cfg: Config, texts: pd.DataFrame, bigbench_average: bool = True) -> pd.DataFrame:
    """Tidy Table 5 of ours: ``role, task, value`` (the sum over the task's texts), ``n`` texts, ``per_text`` (the
    mean contribution) and its 95% bootstrap interval; BIG-bench tasks also averaged into ``bigbench_avg``."""
    import pandas as pd

    roles = [c.removeprefix("q_") for c in texts.columns if c.startswith("q_")]
    rows = []
    for role in roles:
        bb = []
        for task, part in texts.groupby("task", sort=False):
            contrib = -(part["p"].to_numpy() * np.log(part[f"q_{role}"].to_numpy()))
            low, high = bootstrap_ci(contrib, cfg.eval.bootstrap_samples, cfg.eval.confidence, cfg.seed)
            rows.append({"role": role, "task": task, "value": float(contrib.sum()), "n": len(contrib),
                         "per_text": float(contrib.mean()), "per_text_ci_low": low, "per_text_ci_high": high})
            if task.startswith("bigbench:"):
                bb.append(rows[-1])
        if bigbench_average and bb:
            rows.append({"role": role, "task": BIGBENCH_AVG, "value": float(np.mean([r["value"] for r in bb])),
                         "n": int(sum(r["n"] for r in bb)), "per_text": float(np.mean([r["per_text"] for r in bb])),
                         "per_text_ci_low": np.nan, "per_text_ci_high": np.nan})
    return pd.DataFrame(rows, columns=["role", "task", "value", "n", "per_text", "per_text_ci_low",
                                       "per_text_ci_high"])


def cross_entropy_difference(cfg: Config, texts: pd.DataFrame, role: str = "brd",
                             baseline: str = "student_base") -> pd.DataFrame:
    """Per task, ``role``'s cross-entropy minus ``baseline``'s on the same texts (negative: ``role`` is closer to
    the teacher), as a sum and relative to the baseline, with a paired bootstrap interval of the summed difference."""
    import pandas as pd

    for r in (role, baseline):
        if f"q_{r}" not in texts.columns:
            have = [c.removeprefix("q_") for c in texts.columns if c.startswith("q_")]
            raise CrossEntropyError(f"no student probabilities for {r!r}; present: {have}")
    rows = []
    for task, part in texts.groupby("task", sort=False):
        p = part["p"].to_numpy()
        diff = -(p * np.log(part[f"q_{role}"].to_numpy())) + p * np.log(part[f"q_{baseline}"].to_numpy())
        base = float(-(p * np.log(part[f"q_{baseline}"].to_numpy())).sum())
        low, high = bootstrap_ci(diff, cfg.eval.bootstrap_samples, cfg.eval.confidence, cfg.seed)
        rows.append({"task": task, "n": len(diff), "delta": float(diff.sum()), "ci_low": low * len(diff),
                     "ci_high": high * len(diff), "relative_%": 100 * float(diff.sum()) / base if base else np.nan})
    return pd.DataFrame(rows, columns=["task", "n", "delta", "ci_low", "ci_high", "relative_%"])


def table5(cfg: Config, tidy: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """Ours beside the paper's Table 5 (wide, the paper's roles ``student_base`` and ``brd``), with per task our
    ``n`` texts and the mean per text (sums are comparable only on the same texts)."""
    import pandas as pd

    ours = tidy[tidy["task"].isin(["xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench_avg"])]
    wide = compare_with_paper(ours[["role", "task", "value"]], "table5", cfg.profile, decimals=decimals)
    n = {(r.role, r.task): int(r.n) for r in ours.itertuples()}
    per = {(r.role, r.task): round(r.per_text, 4) for r in ours.itertuples()}
    for task in dict.fromkeys(ours["task"]):
        column = f"{task}: ours ({cfg.profile})"
        if column not in wide.columns:
            continue
        at = list(wide.columns).index(column) + 1
        wide.insert(at, f"{task}: n", pd.array([n.get((r, task)) for r in wide["role"]], dtype="Int64"))
        wide.insert(at + 1, f"{task}: per text", [per.get((r, task)) for r in wide["role"]])
    return wide


def cross_entropy_figure(cfg: Config, tidy: pd.DataFrame, role: str = "brd",
                         baseline: str = "student_base") -> Figure:
    """Left: our cross-entropy per text of both students, per task, with 95% intervals. Right: the relative change
    from ``baseline`` to ``role`` (%), ours beside the paper's (scale-free, so comparable across n)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    tasks = list(dict.fromkeys(tidy["task"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(9, 0.9 * len(tasks) + 6), 4.2))
    width = 0.38
    for k, r in enumerate((baseline, role)):
        part = tidy[tidy["role"] == r].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) + (k - 0.5) * width
        err = np.vstack([part["per_text"] - part["per_text_ci_low"], part["per_text_ci_high"] - part["per_text"]])
        ax1.bar(x, part["per_text"], width, label=r, yerr=np.nan_to_num(err), capsize=2)
    ax1.set_xticks(np.arange(len(tasks)), [t.removeprefix("bigbench:")[:22] for t in tasks], rotation=50, ha="right")
    ax1.set_ylabel(r"cross-entropy per text, $-p\,\log q$")
    ax1.set_title(f"ours ({cfg.profile}): lower = closer to the teacher", fontsize=10)
    ax1.legend(fontsize=8)
    paper = paper_rows("table5")
    main = [t for t in dict.fromkeys(paper["task"]) if t in set(tidy["task"])]
    rel = []
    for t in main:
        ours = tidy[tidy["task"] == t].set_index("role")["value"]
        theirs = paper[paper["task"] == t].set_index("role")["value"]
        rel.append({"task": t, "source": f"ours ({cfg.profile})", "value": 100 * (ours[role] / ours[baseline] - 1)})
        rel.append({"task": t, "source": "paper", "value": 100 * (theirs[role] / theirs[baseline] - 1)})
    rel_frame = pd.DataFrame(rel, columns=["task", "source", "value"])
    for k, source in enumerate([f"ours ({cfg.profile})", "paper"]):
        part = rel_frame[rel_frame["source"] == source].set_index("task").reindex(main)
        ax2.bar(np.arange(len(main)) + (k - 0.5) * width, part["value"], width, label=source)
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_xticks(np.arange(len(main)), main, rotation=40, ha="right")
    ax2.set_ylabel(f"change, {role} vs {baseline} (%)")
    ax2.set_title("relative change (below 0: BRD moved the student towards the teacher)", fontsize=10)
    ax2.legend(fontsize=8)
    fig.suptitle(f"Table 5: teacher-student cross-entropy ({cfg.scale_note})", fontsize=11)
    fig.tight_layout()
    return fig
