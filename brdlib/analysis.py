"""The paper's analyses (notebooks 07-09): teacher-student cross-entropy (Table 5, §5.2), layer-wise probing
(Figure 4, A.5) and the data-size curve (Figure 2, §5.6).

    from brdlib import analysis
    ce = analysis.cross_entropy_texts(cfg, {"student_base": "student", "brd": "brd"})   # per text: p, q
    table = analysis.cross_entropy_table(cfg, ce)                                       # role, task, value, n
    probes = analysis.probe_models(cfg, {"student_base": "student", "brd": "brd"})     # role, task, layer, acc
    plan = analysis.data_size_plan(cfg)                                                 # fraction -> student

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

**Figure 4 (A.5).** Per layer, the hidden states of each task input (the filled prompt) are averaged over its
tokens (attention-masked), and an L2-regularised logistic regression (scikit-learn) predicts the gold label; the
inverse strength C is chosen on the tune split from ``analysis.probing_c_grid``; the accuracy is on the test split.
Layer 0 is the embedding output. Only tasks with one fixed candidate set (the Table 9 tasks) are probed.
A.5 probes on each task's training set; ours is cut (stratified, seeded) to ``analysis.probing_max_train`` inputs,
and tune/test to ``analysis.probing_max_eval``: each input's states cost (layers + 1) x hidden x 4 bytes (XGLM-564M:
100 KB), so XNLI's 392,702 training inputs would be 40 GB per model; a set over ``analysis.probing_max_feature_gb``
is refused before anything is encoded.

**Figure 2 (§5.6).** One student per share f of the source passages (variant ``brd_frac<f>``; f = 1 is ``brd``
itself), scored blind on the test split, plotted against the passages (and tokens) of BRD data, the base student
at 0. ``analysis.data_size_steps: epochs`` trains each size for ``recipes.brd.max_steps`` times its share of the BRD
tokens, so every point reads its data as many times as ``brd`` does; ``fixed`` trains every size for
``recipes.ablation.max_steps`` steps (then f = 1 is retrained at those steps so the curve has one schedule).
"""

from __future__ import annotations

import hashlib
import logging
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from brdlib.config import Config

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

BLIND_ROLES: dict[str, str] = {"student_base": "student", "brd": "brd"}
"""The two models every analysis compares: paper role -> model reference (the student before and after BRD)."""


class AnalysisError(ValueError):
    """An analysis request that cannot run (named, with what is accepted)."""


def _model_label(loaded: Any) -> str:
    """'smollm2-135m-instruct (135M)': a loaded model's spec (a student's directory name) and parameters."""
    return f"{Path(loaded.spec).name} ({loaded.n_params / 1e6:.3g}M)"


def analysis_dir(cfg: Config) -> Path:
    """Caches of the analyses: ``data/<profile>/analysis/``."""
    return cfg.data_dir / "analysis"


def ensure_students(cfg: Config, refs: Mapping[str, str] = BLIND_ROLES, progress: bool = True) -> dict[str, str]:
    """Train (or reuse) every referenced student that is a passage variant's student trained as notebook 03 does
    (``brd``), so a notebook runs on its own on a fresh output root. Returns ``refs`` unchanged."""
    from brdlib.train import train_student

    for ref in refs.values():
        if ref == "brd":
            ensure_variants(cfg, ["brd"])
            train_student(cfg, "brd", "brd", progress=progress)  # notebook 03's student: reused when up to date
    return dict(refs)


def ensure_variants(cfg: Config, variants: Sequence[str]) -> None:
    """Assemble the passage variants not assembled yet (running the teacher stage first where its outputs are
    missing, as :func:`brdlib.assemble.assemble_all` does)."""
    from brdlib.assemble import assemble_all
    from brdlib.store import passages_dir

    missing = [v for v in dict.fromkeys(variants) if not (passages_dir(cfg, v) / "card.json").is_file()]
    if missing:
        assemble_all(cfg, missing)


# Per-token log-probabilities ---------------------------------------------------------------------------------


def token_logprobs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                   logits_budget_mb: int = 256, progress: bool = False, special_tokens: str = "tokenizer",
                   max_length: int | None = None) -> list[np.ndarray]:
    """Log-probability of each token of ``continuation`` given ``context``, per (context, continuation) pair.

    Read as the scorer reads (``brdlib.scoring``'s module docstring): tokenised as :func:`brdlib.scoring.encode_pair`
    with the start tokens of ``special_tokens`` (an empty context conditions on them, or on the end-of-text token, so
    the first token of a text is scored too); bounded by the model's positions (or ``max_length``) as lm-eval bounds
    them (:func:`brdlib.scoring.fit_windows`: the context cut from the left; a text longer than the positions read in
    rolling windows). The sums equal :func:`brdlib.scoring.score_reference` where that applies. Pieces are
    right-padded into batches sorted by length, of at most ``batch_size`` sequences and at most
    ``logits_budget_mb`` of fp32 logits (a 152k vocabulary makes them large).
    """
    import torch
    from tqdm.auto import tqdm

    from brdlib.scoring import encode_pair, fit_windows, reading

    read = reading(model, tokenizer, special_tokens, max_length)
    pieces: list[tuple[int, list[int], list[int]]] = []  # (pair, context, continuation), each fitting the positions
    n_fitted = 0
    for i, (ctx, cont) in enumerate(pairs):
        encoded = encode_pair(tokenizer, ctx, cont, read)
        windows = fit_windows(*encoded, read.max_length)
        n_fitted += windows != [encoded]
        pieces += [(i, c, t) for c, t in windows]
    if n_fitted:
        log.info("%d of %d texts exceed %s positions: context cut from the left or read in windows (as lm-eval)",
                 n_fitted, len(pairs), read.max_length)
    order = sorted(range(len(pieces)), key=lambda k: -(len(pieces[k][1]) + len(pieces[k][2])))
    vocab = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
    max_tokens = max(1, logits_budget_mb * 2**20 // (4 * vocab))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(pieces)
    bar = tqdm(total=len(pieces), desc="token log-probs", unit="text", disable=not progress)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            longest = len(pieces[order[start]][1]) + len(pieces[order[start]][2]) - 1  # the last token is no input
            size = max(1, min(batch_size, max_tokens // max(longest, 1)))
            chunk = order[start:start + size]
            ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, k in enumerate(chunk):
                seq = (pieces[k][1] + pieces[k][2])[:-1]
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, k in enumerate(chunk):
                _, ctx, cont = pieces[k]
                positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=logits.device)
                logprobs = torch.log_softmax(logits[row, positions].float(), dim=-1)
                targets = torch.tensor(cont, device=logits.device)
                out[k] = logprobs[torch.arange(len(cont), device=logits.device), targets].cpu().numpy()
            del logits
            bar.update(len(chunk))
            start += size
    bar.close()
    by_pair: list[list[np.ndarray]] = [[] for _ in pairs]
    for (i, _, _), lp in zip(pieces, out, strict=True):  # pieces of a pair are in text order
        assert lp is not None
        by_pair[i].append(lp)
    return [np.concatenate(parts) for parts in by_pair]


@dataclass(frozen=True)
class TextProb:
    """A text's probability under one model: its tokens' count, summed log-probability and mean probability."""

    n_tokens: int
    sum_logprob: float
    mean_prob: float  # arithmetic mean of the per-token probabilities

    @classmethod
    def from_logprobs(cls, logprobs: np.ndarray) -> TextProb:
        lp = np.asarray(logprobs, dtype=np.float64)
        return cls(int(lp.size), float(lp.sum()), float(np.exp(lp).mean()))

    def sequence_prob(self, average: Literal["arithmetic", "geometric"] = "arithmetic") -> float:
        """The text's sequence-level probability averaged over its tokens (§5.2): arithmetic mean of the
        per-token probabilities, or their geometric mean ``exp(mean log-prob)``."""
        if average == "arithmetic":
            return self.mean_prob
        if average == "geometric":
            return float(np.exp(self.sum_logprob / max(self.n_tokens, 1)))
        raise AnalysisError(f"unknown average {average!r}; accepted: 'arithmetic', 'geometric'")


class TextProbCache:
    """:class:`TextProb` on disk (SQLite), keyed by (model fingerprint, hash of context and text)."""

    def __init__(self, path: Path | str) -> None:
        import sqlite3

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS probs (model TEXT, text TEXT, n_tokens INTEGER, "
                         "sum_logprob REAL, mean_prob REAL, PRIMARY KEY (model, text))")

    @staticmethod
    def key(context: str, continuation: str) -> str:
        return hashlib.sha256(f"{len(context)}:{context}{continuation}".encode()).hexdigest()[:32]

    def get(self, model: str, key: str) -> TextProb | None:
        row = self._db.execute("SELECT n_tokens, sum_logprob, mean_prob FROM probs WHERE model=? AND text=?",
                               (model, key)).fetchone()
        return TextProb(*row) if row else None

    def put_many(self, model: str, items: Sequence[tuple[str, TextProb]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO probs VALUES (?, ?, ?, ?, ?)",
                                 [(model, k, p.n_tokens, p.sum_logprob, p.mean_prob) for k, p in items])

    def close(self) -> None:
        self._db.close()


def text_probs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], cache: TextProbCache | None = None,
               batch_size: int = 8, progress: bool = False, special_tokens: str = "tokenizer",
               max_length: int | None = None) -> list[TextProb]:
    """:class:`TextProb` of each (context, continuation) pair, read as :func:`token_logprobs` says; with a cache,
    only pairs these weights have not scored before under this reading are run (committed every few batches, so a
    killed run keeps its work)."""
    from tqdm.auto import tqdm

    from brdlib.scoring import model_fingerprint, reading

    read_kw = {"special_tokens": special_tokens, "max_length": max_length}
    fingerprint = f"{model_fingerprint(model)}|{reading(model, tokenizer, **read_kw).key}" if cache is not None else ""
    keys = [TextProbCache.key(c, t) for c, t in pairs]
    results: list[TextProb | None] = [cache.get(fingerprint, k) if cache else None for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    step = max(batch_size * 8, 1)
    bar = tqdm(total=len(todo), desc="text probabilities", unit="text", disable=not progress or not todo)
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        lps = token_logprobs(model, tokenizer, [pairs[i] for i in chunk], batch_size=batch_size, **read_kw)
        fresh = [TextProb.from_logprobs(lp) for lp in lps]
        for i, p in zip(chunk, fresh, strict=True):
            results[i] = p
        if cache is not None:
            cache.put_many(fingerprint, [(keys[i], p) for i, p in zip(chunk, fresh, strict=True)])
        bar.update(len(chunk))
    bar.close()
    return [r for r in results if r is not None]


# Table 5: cross-entropy ------------------------------------------------------------------------------------------


def cross_entropy(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray) -> float:
    """``-sum_i p_i log q_i`` over texts (§5.2), p the teacher's and q the student's sequence probabilities,
    neither normalised (see the module docstring). Lower means the student is closer to the teacher."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise AnalysisError(f"p and q must be over the same texts; got {p.size} and {q.size} values")
    if np.any(q <= 0) or np.any(q > 1) or np.any(p < 0) or np.any(p > 1):
        raise AnalysisError("p must lie in [0, 1] and q in (0, 1]: they are sequence probabilities")
    return float(-(p * np.log(q)).sum())


def ce_pairs(example: Any, text: Literal["instance", "candidates"] = "instance") -> list[tuple[str, str]]:
    """The (context, text) pairs of one example for Table 5: ``instance`` is the prompt with its gold answer as one
    text from the start; ``candidates`` is each candidate given the prompt."""
    if text == "instance":
        return [("", example.prompt + example.continuations[example.gold])]
    if text == "candidates":
        return [(example.prompt, c) for c in example.continuations]
    raise AnalysisError(f"unknown cross-entropy text {text!r}; accepted: 'instance', 'candidates'")


def cross_entropy_examples(cfg: Config, tasks: Sequence[str] | None = None) -> dict[str, list[Any]]:
    """Each task's test examples for Table 5: up to ``analysis.cross_entropy_max_examples`` random (label-
    stratified, seeded) instances per BIG-bench task, ``analysis.cross_entropy_max_examples_main`` per other task."""
    from brdlib.tasks import gold_label, load_examples, stratified_sample, task_names

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

    from brdlib.models import free_memory, load_ref

    by_task = cross_entropy_examples(cfg, tasks)
    kind = cfg.analysis.cross_entropy_text
    rows, pairs = [], []
    for task, examples in by_task.items():
        for ex in examples:
            for j, pair in enumerate(ce_pairs(ex, kind)):
                rows.append({"task": task, "example_id": ex.example_id, "text": j})
                pairs.append(pair)
    frame = pd.DataFrame(rows, columns=["task", "example_id", "text"])
    cache = TextProbCache(analysis_dir(cfg) / "text_probs.sqlite")
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
            frame.attrs.setdefault("models", {})[column] = _model_label(loaded)
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

    from brdlib.evaluate import BIGBENCH_AVG, bootstrap_ci

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

    from brdlib.evaluate import bootstrap_ci

    for r in (role, baseline):
        if f"q_{r}" not in texts.columns:
            have = [c.removeprefix("q_") for c in texts.columns if c.startswith("q_")]
            raise AnalysisError(f"no student probabilities for {r!r}; present: {have}")
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

    from brdlib.report import compare_with_paper

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

    from brdlib.report import paper_rows

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


# Figure 4: layer-wise probing ---------------------------------------------------------------------------------------


def mean_pooled_states(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 8,
                       progress: bool = False, special_tokens: str = "tokenizer",
                       max_length: int | None = None) -> np.ndarray:
    """Hidden states averaged over each text's tokens (padding masked out), per layer: ``[layers + 1, n, hidden]``
    (index 0 is the embedding output), float32.

    Each text is read as the scorer reads it (:func:`brdlib.scoring.encode_text`: the start tokens of
    ``special_tokens``, XGLM's ``</s>`` by default, are among the pooled tokens, as in training); a text longer than
    the model's positions (or ``max_length``) keeps its last tokens, as the scorer keeps a context's."""
    import torch
    from tqdm.auto import tqdm

    from brdlib.scoring import encode_text, reading

    read = reading(model, tokenizer, special_tokens, max_length)
    encoded = [encode_text(tokenizer, t, read) for t in texts]
    if read.max_length is not None and any(len(ids) > read.max_length for ids in encoded):
        log.info("%d of %d texts cut to their last %d tokens for probing",
                 sum(len(ids) > read.max_length for ids in encoded), len(encoded), read.max_length)
        encoded = [ids[-read.max_length:] for ids in encoded]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise AnalysisError(f"texts {empty[:5]} encode to no tokens; probing needs at least one token per text")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: np.ndarray | None = None
    bar = tqdm(total=len(texts), desc="hidden states", unit="text", disable=not progress)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            longest = len(encoded[chunk[0]])
            ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            result = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                           logits_to_keep=1)
            m = mask.to(device).unsqueeze(-1).float()
            pooled = torch.stack([(h.float() * m).sum(1) / m.sum(1) for h in result.hidden_states])
            if out is None:
                out = np.zeros((pooled.shape[0], len(texts), pooled.shape[-1]), dtype=np.float32)
            out[:, chunk] = pooled.cpu().numpy()
            bar.update(len(chunk))
    bar.close()
    if out is None:
        raise AnalysisError("no texts to encode")
    return out


def probe_layer(train: tuple[np.ndarray, np.ndarray], tune: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray], c_grid: Sequence[float], seed: int = 0) -> dict[str, Any]:
    """Fit an L2-regularised logistic regression (standardised features) on ``train`` for each C in ``c_grid``,
    keep the C with the best ``tune`` accuracy (ties: the smallest C, the strongest regularisation), and return
    ``{"C", "tune_accuracy", "test_accuracy"}``. One class in train: every prediction is that class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xtu, ytu), (xte, yte) = train, tune, test
    if len(np.unique(ytr)) < 2:
        only = ytr[0]
        return {"C": np.nan, "tune_accuracy": float(np.mean(ytu == only)), "test_accuracy": float(np.mean(yte == only))}
    best: tuple[float, float, Any] | None = None
    for c in sorted(c_grid):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        probe.fit(xtr, ytr)
        acc = float(probe.score(xtu, ytu))
        if best is None or acc > best[0]:
            best = (acc, c, probe)
    assert best is not None
    return {"C": best[1], "tune_accuracy": best[0], "test_accuracy": float(best[2].score(xte, yte))}


def probing_tasks(cfg: Config) -> list[str]:
    """The profile's tasks probed: those with one fixed candidate set (the Table 9 tasks; BIG-bench tasks vary)."""
    from brdlib.tasks import TABLE9_TASKS

    wanted = cfg.analysis.probing_tasks
    if wanted is not None:
        bad = [t for t in wanted if t not in TABLE9_TASKS]
        if bad:
            raise AnalysisError(f"analysis.probing_tasks {bad} cannot be probed; accepted: {', '.join(TABLE9_TASKS)}")
        return list(wanted)
    tasks = [t for t in cfg.data.tasks if t in TABLE9_TASKS]
    if not tasks:
        raise AnalysisError(f"profile {cfg.profile!r} has no Table 9 task to probe (data.tasks: {cfg.data.tasks}); "
                            f"accepted: {', '.join(TABLE9_TASKS)}")
    return tasks


PROBE_STATE_BYTES = 4
"""Bytes per hidden-state value kept for the probes (float32, :func:`mean_pooled_states`)."""


def probe_feature_bytes(n_inputs: int, n_states: int, hidden: int) -> int:
    """Bytes of the mean-pooled hidden states of ``n_inputs`` texts: ``n_states`` (layers + the embedding output)
    x ``hidden`` x 4 (float32). XGLM-564M: 25 x 1,024 x 4 = 102,400 bytes per input."""
    return n_inputs * n_states * hidden * PROBE_STATE_BYTES


def check_probe_memory(cfg: Config, task: str, sizes: Mapping[str, int], model_config: Any) -> int:
    """Refuse to probe ``task`` when one model's hidden states of its inputs (``sizes``: split -> inputs; the
    splits are held together) would exceed ``analysis.probing_max_feature_gb``; returns the bytes otherwise."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    n_states, hidden = text.num_hidden_layers + 1, text.hidden_size
    need = probe_feature_bytes(sum(sizes.values()), n_states, hidden)
    limit = cfg.analysis.probing_max_feature_gb
    if limit is not None and need > limit * 1e9:
        split_text = ", ".join(f"{s} {n:,}" for s, n in sizes.items())
        raise AnalysisError(
            f"probing {task}: {split_text} inputs x {n_states} layers x {hidden} x {PROBE_STATE_BYTES} bytes = "
            f"{need / 1e9:.1f} GB of hidden states, over analysis.probing_max_feature_gb={limit}; bound the inputs "
            f"with analysis.probing_max_train / analysis.probing_max_eval (now {cfg.analysis.probing_max_train} / "
            f"{cfg.analysis.probing_max_eval}) or raise the limit")
    return need


def probing_data(cfg: Config, tasks: Sequence[str] | None = None) -> dict[str, dict[str, list[Any]]]:
    """Per task, its train (capped at ``analysis.probing_max_train``), tune and test examples (capped at
    ``analysis.probing_max_eval``), label-stratified and seeded. :func:`probe_models` refuses sets whose hidden
    states exceed ``analysis.probing_max_feature_gb`` (:func:`check_probe_memory`)."""
    from brdlib.tasks import gold_label, load_examples, stratified_sample

    a, seed = cfg.analysis, cfg.data.split_seed
    out = {}
    for task in tasks if tasks is not None else probing_tasks(cfg):
        caps = {"train": a.probing_max_train, "tune": a.probing_max_eval, "test": a.probing_max_eval}
        out[task] = {s: stratified_sample(load_examples(cfg, task, s), cap, seed, gold_label)
                     for s, cap in caps.items()}
    return out


def probe_models(cfg: Config, roles: Mapping[str, str] = BLIND_ROLES, tasks: Sequence[str] | None = None,
                 progress: bool = True) -> pd.DataFrame:
    """Figure 4: per role, task and layer, the probe's chosen C, tune and test accuracy (%), and the split sizes and
    the test majority-class accuracy (the chance line)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from brdlib.models import free_memory, load_ref

    data = probing_data(cfg, tasks)
    rows = []
    for role, ref in roles.items():
        loaded = load_ref(cfg, ref)
        for task, splits in data.items():  # before any encoding: an unbounded set fails here, named
            check_probe_memory(cfg, task, {s: len(exs) for s, exs in splits.items()}, loaded.model.config)
        for task, splits in tqdm(data.items(), desc=f"probing {role}", unit="task", disable=not progress):
            feats = {s: mean_pooled_states(loaded.model, loaded.tokenizer, [e.prompt for e in exs],
                                           cfg.eval.batch_size, special_tokens=cfg.eval.special_tokens,
                                           max_length=cfg.eval.max_length) for s, exs in splits.items()}
            labels = {s: np.array([e.gold for e in exs]) for s, exs in splits.items()}
            majority = float(np.max(np.bincount(labels["test"])) / len(labels["test"]))
            for layer in range(feats["train"].shape[0]):
                res = probe_layer(*[(feats[s][layer], labels[s]) for s in ("train", "tune", "test")],
                                  c_grid=cfg.analysis.probing_c_grid, seed=cfg.seed)
                rows.append({"role": role, "model": _model_label(loaded),
                             "task": task, "layer": layer, "C": res["C"],
                             "tune_accuracy": 100 * res["tune_accuracy"], "test_accuracy": 100 * res["test_accuracy"],
                             "n_train": len(splits["train"]), "n_tune": len(splits["tune"]),
                             "n_test": len(splits["test"]), "majority": 100 * majority})
        del loaded
        free_memory()
    return pd.DataFrame(rows)


def probing_summary(probes: pd.DataFrame, role: str = "brd", baseline: str = "student_base") -> pd.DataFrame:
    """Per task: layers where ``role``'s probe beats ``baseline``'s (ties apart), the mean and best test accuracy of
    each, and the majority-class accuracy: the paper's claim is that BRD wins on almost all layers of every task."""
    import pandas as pd

    rows = []
    for task, part in probes.groupby("task", sort=False):
        a = part[part["role"] == role].set_index("layer")["test_accuracy"]
        b = part[part["role"] == baseline].set_index("layer")["test_accuracy"]
        both = a.index.intersection(b.index)
        d = a[both] - b[both]
        rows.append({"task": task, "layers": len(both), f"{role} better": int((d > 0).sum()),
                     "tied": int((d == 0).sum()),
                     f"{baseline} better": int((d < 0).sum()), f"{role} mean": a.mean(), f"{baseline} mean": b.mean(),
                     f"{role} best": a.max(), f"{baseline} best": b.max(), "majority": part["majority"].iloc[0],
                     "n_train": int(part["n_train"].iloc[0]), "n_test": int(part["n_test"].iloc[0])})
    return pd.DataFrame(rows)


def probing_figure(probes: pd.DataFrame, title: str = "") -> Figure:
    """As the paper's Figure 4: test accuracy (%) against layer, one panel per task, one line per model; the dotted
    line is the majority-class accuracy."""
    import seaborn as sns

    grid = sns.relplot(data=probes, x="layer", y="test_accuracy", hue="role", col="task", kind="line", marker="o",
                       markersize=4, col_wrap=min(3, probes["task"].nunique()), height=2.8, aspect=1.3,
                       facet_kws={"sharey": False})
    for task, ax in grid.axes_dict.items():
        ax.axhline(probes[probes["task"] == task]["majority"].iloc[0], ls=":", color="grey", lw=1)
    from matplotlib.ticker import MaxNLocator

    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grid.set_axis_labels("layer (0 = embeddings)", "probe accuracy (%)")
    grid.set_titles("{col_name}")
    if title:
        grid.figure.suptitle(textwrap.fill(title, 140), y=1.03, fontsize=10)
    return grid.figure


# Figure 2: data-size curve ----------------------------------------------------------------------------------------


def data_size_fractions(cfg: Config) -> list[float]:
    """The shares of the curve: ``analysis.data_size_fractions``, else ``passages.size_fractions``."""
    return list(cfg.analysis.data_size_fractions or cfg.passages.size_fractions)


def data_size_plan(cfg: Config) -> pd.DataFrame:
    """One row per size: ``fraction, variant, student, steps`` and the variant's source passages, rows and tokens
    (assembled here where missing). See the module docstring for the two step rules."""
    import pandas as pd

    from brdlib.assemble import size_variant_name
    from brdlib.store import load_card

    fractions = data_size_fractions(cfg)
    mode = cfg.analysis.data_size_steps
    every = sorted(set([*fractions, 1.0]))
    ensure_variants(cfg, [size_variant_name(f) for f in every])
    cards = {f: load_card(cfg, size_variant_name(f)) for f in every}
    full_tokens = cards[1.0]["tokens"]["tokens"]
    full, fixed = cfg.recipes.brd.max_steps, cfg.recipes.ablation.max_steps
    rows = []
    for f in fractions:
        variant, card = size_variant_name(f), cards[f]
        if mode == "epochs":
            steps = full if f == 1 else max(1, round(full * card["tokens"]["tokens"] / max(full_tokens, 1)))
            student = variant
        else:
            steps = fixed
            student = "brd" if f == 1 and fixed == full else f"{variant}_steps{fixed}"
        rows.append({"fraction": f, "variant": variant, "student": student, "steps": steps,
                     "passages": card["source_passages"], "sentences": card["sentences"], "rows": card["rows"],
                     "tokens": card["tokens"]["tokens"]})
    return pd.DataFrame(rows)


def train_size_students(cfg: Config, plan: pd.DataFrame, progress: bool = True) -> dict[str, Path]:
    """Train (or reuse) the student of each size of ``plan``; returns student name -> directory."""
    from brdlib.train import train_student

    return {r.student: train_student(cfg, r.variant, r.student, recipe="brd", max_steps=int(r.steps), progress=progress)
            for r in plan.itertuples()}


def evaluate_sizes(cfg: Config, plan: pd.DataFrame, base_role: str = "student_base",
                   progress: bool = True) -> pd.DataFrame:
    """Blind-test predictions of the base student and every size's student on up to
    ``analysis.data_size_max_examples`` test examples per task (cached scores reused). Only the size students'
    predictions are saved: the base's and ``brd``'s, possibly on fewer examples here, would overwrite notebook 04's."""
    import pandas as pd

    from brdlib.evaluate import evaluate_model, save_predictions

    cap = cfg.analysis.data_size_max_examples
    shared = {base_role: "student", "brd": "brd"}
    frames = [evaluate_model(cfg, ref, role, max_examples=cap, progress=progress) for role, ref in shared.items()
              if role == base_role or role in set(plan["student"])]
    sizes = [evaluate_model(cfg, s, s, max_examples=cap, progress=progress) for s in plan["student"] if s not in shared]
    if sizes:
        save_predictions(cfg, pd.concat(sizes, ignore_index=True))
    return pd.concat([*frames, *sizes], ignore_index=True)


def data_size_frame(plan: pd.DataFrame, accuracy: pd.DataFrame, base_role: str = "student_base") -> pd.DataFrame:
    """Tidy curve: per size (the base student at 0) and task, the accuracy with its interval and ``n``, and the
    size in passages, tokens and steps; the Table 3 ``average`` over the paper's columns where all are present."""
    import pandas as pd

    from brdlib.evaluate import TABLE_TASKS

    sizes = [{"student": base_role, "fraction": 0.0, "passages": 0, "tokens": 0, "steps": 0},
             *plan[["student", "fraction", "passages", "tokens", "steps"]].to_dict("records")]
    size = pd.DataFrame(sizes)
    acc = accuracy.rename(columns={"role": "student"})
    merged = size.merge(acc, on="student", how="inner")
    tasks = [t for t in TABLE_TASKS if t in set(merged["task"])]
    if len(tasks) == len(TABLE_TASKS):
        avg = merged[merged["task"].isin(tasks)].groupby(["student", "fraction", "passages", "tokens", "steps"],
                                                          as_index=False, sort=False)["value"].mean()
        merged = pd.concat([merged, avg.assign(task="average")], ignore_index=True)
    return merged.sort_values(["fraction", "task"], kind="stable").reset_index(drop=True)


def data_size_table(curve: pd.DataFrame, profile: str, decimals: int = 1) -> pd.DataFrame:
    """Wide: one row per size, the accuracy (%) per paper column and the average."""
    from brdlib.evaluate import TABLE_TASKS

    keys = ["fraction", "student", "passages", "tokens", "steps"]
    shown = curve[curve["task"].isin([*TABLE_TASKS, "average"])]
    wide = shown.pivot_table(index=keys, columns="task", values="value", sort=False).reset_index()
    columns = [t for t in [*TABLE_TASKS, "average"] if t in wide.columns]
    wide = wide[[*keys, *columns]].sort_values("fraction").round(decimals)
    return wide.rename(columns={t: f"{t}: ours ({profile})" for t in columns})


def data_size_claims(curve: pd.DataFrame) -> pd.DataFrame:
    """The paper's one statement on Figure 2 (``figure_claims.csv``) beside what our curve shows."""
    import pandas as pd

    from brdlib.report import paper_table

    claims = paper_table("figure_claims")
    claim = claims[claims["figure"] == "figure2"].iloc[0]
    avg = curve[curve["task"] == "average"].sort_values("fraction")
    by = avg if len(avg) else curve.groupby(["fraction", "passages"], as_index=False)["value"].mean()
    values = by["value"].to_numpy()
    steps = np.diff(values)
    rows = [
        {"quantity": "BRD passages: where the paper's curve plateaus; our largest size", "paper": claim["value"] * 1e6,
         "ours": int(by["passages"].max()), "note": f"paper: \"{claim['quote']}\""},
        {"quantity": "average accuracy, base student -> largest size (points)", "paper": np.nan,
         "ours": round(float(values[-1] - values[0]), 1) if len(values) > 1 else np.nan,
         "note": "the paper: \"most tasks exhibit a steady improvement as BRD data gets bigger\""},
        {"quantity": "size steps that raise the average accuracy", "paper": np.nan,
         "ours": f"{int((steps > 0).sum())} of {len(steps)}", "note": "a steady improvement raises it at every step"},
    ]
    return pd.DataFrame(rows, columns=["quantity", "paper", "ours", "note"])


def data_size_figure(curve: pd.DataFrame, x: Literal["passages", "tokens"] = "passages", title: str = "") -> Figure:
    """As the paper's Figure 2: accuracy (%) against the BRD data size, one panel per task (the paper's columns and
    the average), 95% intervals as error bars; the base student is the point at 0."""
    import matplotlib.pyplot as plt

    from brdlib.evaluate import TABLE_TASKS

    tasks = [t for t in [*TABLE_TASKS, "average"] if t in set(curve["task"])]
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.7 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        part = curve[curve["task"] == task].sort_values(x)
        err = None
        if "ci_low" in part.columns and part["ci_low"].notna().any():
            err = np.nan_to_num(np.vstack([part["value"] - part["ci_low"], part["ci_high"] - part["value"]]))
        ax.errorbar(part[x], part["value"], yerr=err, marker="o", capsize=3)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(f"BRD {x}")
        ax.set_ylabel("accuracy (%)")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    if title:
        fig.suptitle(textwrap.fill(title, 150), fontsize=10)
    fig.tight_layout()
    return fig
