"""Zero-shot multiple-choice evaluation of named models on the profile's tasks (paper §3.3, Tables 3-12).

    from brdlib.evaluate import evaluate_models, accuracy_table
    preds = evaluate_models(cfg, {"student_base": "student", "brd": "brd"})   # role -> model reference
    acc = accuracy_table(cfg, preds)        # tidy: role, task, value (%), n, ci_low, ci_high

A *model reference* is a profile role (``teacher``, ``student``, a key of ``models.extra``), the name of a
student trained in this profile (``brd``, ``further``, ... under ``data/<profile>/students/``), or any model spec.
Scores are cached in ``data/<profile>/eval/scores.sqlite`` keyed by the weights' fingerprint, so re-running a
notebook rescores nothing unchanged; per-example predictions are kept in ``data/<profile>/eval/predictions/``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brdlib.config import Config
from brdlib.models import free_memory, load_ref
from brdlib.report import compare_with_paper, paper_rows, with_average
from brdlib.scoring import ScoreCache, predict, reading, score_examples, tie_key, tied
from brdlib.store import artefact_dir
from brdlib.tasks import gold_label, load_examples, stratified_sample, task_names

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BIGBENCH_AVG", "TABLE_AVERAGE", "TABLE_TASKS", "EvaluateError", "accuracy_table", "bootstrap_ci",
    "bootstrap_ci_of_task_mean", "caption", "table_average_weights", "evaluate_model", "evaluate_models",
    "is_large", "load_predictions", "load_task_examples", "paired_difference", "paper_columns", "predictions_frame",
    "readings", "results_table", "save_predictions",
]

log = logging.getLogger(__name__)

BIGBENCH_AVG = "bigbench_avg"
"""Task name of the BIG-bench average (the paper's BIG-bench-Avg column), as in ``brdlib/paper_reference``."""
TABLE_TASKS = ("xnli", "rte", "cb", "pawsx", "boolq", "sst2", BIGBENCH_AVG)
"""The paper's columns of Table 3, in its order; the paper's Average is their plain mean."""
TABLE_AVERAGE = "average"
"""Task name of the Average over :data:`TABLE_TASKS` (the paper's Table 3 Average column)."""


class EvaluateError(ValueError):
    """A model reference or task that cannot be evaluated (named, with what is accepted)."""


# Model references ----------------------------------------------------------------------------------------------


def is_large(cfg: Config, n_params: int) -> bool:
    """Models of ``eval.large_model_min_params`` or more score ``eval.large_model_max_examples`` per task (if set)."""
    return n_params >= cfg.eval.large_model_min_params


# Scoring ---------------------------------------------------------------------------------------------------------


def load_task_examples(cfg: Config, tasks: Sequence[str], split: str = "test",
                       max_examples: int | None = None) -> dict[str, list[Any]]:
    """Each task's examples of ``split`` (profile-subsampled), cut to ``max_examples`` (a stratified prefix)."""

    out = {}
    for task in tasks:
        examples = load_examples(cfg, task, split)
        if max_examples is not None and len(examples) > max_examples:
            examples = stratified_sample(examples, max_examples, cfg.data.split_seed, gold_label)
        out[task] = examples
    return out


def predictions_frame(role: str, examples: Sequence[Any], scores: Sequence[Sequence[Any]], *,
                      tie_break: str = "random", seed: int = 0) -> pd.DataFrame:
    """One row per example: gold, the mean-rule and sum-rule choices, and each candidate's scores.

    ``tied_<rule>``: several candidates share the best score (broken by ``tie_break``: ``random`` picks among them by
    a hash of ``seed``, task and example id; ``first`` the first); ``truncated``: some candidate's context was cut to
    fit the model's positions."""
    import pandas as pd

    rows = []
    for ex, cand in zip(examples, scores, strict=True):
        key = tie_key(seed, ex.task, ex.example_id)
        rows.append({
            "role": role, "task": ex.task, "example_id": ex.example_id, "split": ex.split,
            "n_candidates": len(ex.candidates), "gold": ex.gold,
            "pred_mean": predict(cand, "mean", tie_break, key), "pred_sum": predict(cand, "sum", tie_break, key),
            "tied_mean": len(tied(cand, "mean")) > 1, "tied_sum": len(tied(cand, "sum")) > 1,
            "truncated": any(getattr(s, "truncated", False) for s in cand),
            "mean_logprobs": [s.mean_logprob for s in cand], "sum_logprobs": [s.sum_logprob for s in cand],
            "n_tokens": [s.n_tokens for s in cand],
        })
    frame = pd.DataFrame(rows, columns=["role", "task", "example_id", "split", "n_candidates", "gold", "pred_mean",
                                        "pred_sum", "tied_mean", "tied_sum", "truncated", "mean_logprobs",
                                        "sum_logprobs", "n_tokens"])
    frame["correct_mean"] = frame["pred_mean"] == frame["gold"]
    frame["correct_sum"] = frame["pred_sum"] == frame["gold"]
    return frame


def evaluate_model(
    cfg: Config,
    ref: str,
    role: str | None = None,
    tasks: Sequence[str] | None = None,
    split: str = "test",
    *,
    max_examples: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every example of ``tasks`` (default: the profile's) with model ``ref``; per-example predictions.

    ``role`` names the row in tables (default: ``ref``). Models of ``eval.large_model_min_params`` or more are cut
    to ``eval.large_model_max_examples`` per task when that is set (tables show it in their ``n`` column).
    """
    import pandas as pd
    import torch

    role = role or ref
    tasks = list(tasks) if tasks is not None else task_names(cfg)
    loaded = load_ref(cfg, ref)
    spec = loaded.spec
    limit = max_examples
    if limit is None and is_large(cfg, loaded.n_params):
        limit = cfg.eval.large_model_max_examples
    by_task = load_task_examples(cfg, tasks, split, limit)
    read_kw = {"special_tokens": cfg.eval.special_tokens, "max_length": cfg.eval.max_length}
    read = reading(loaded.model, loaded.tokenizer, **read_kw)
    cache = ScoreCache(artefact_dir(cfg, "eval") / "scores.sqlite")
    frames = []
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(v) for v in by_task.values()), desc=f"scoring {role}", unit="ex", disable=not progress)
    try:
        with torch.inference_mode():
            for task, examples in by_task.items():
                bar.set_postfix_str(task.removeprefix("bigbench:")[:30])
                scores = score_examples(loaded.model, loaded.tokenizer, examples, cache=cache,
                                        batch_size=cfg.eval.batch_size, progress=False, **read_kw)
                frames.append(predictions_frame(role, examples, scores, tie_break=cfg.eval.tie_break, seed=cfg.seed))
                bar.update(len(examples))
    finally:
        bar.close()
        cache.close()
    out = pd.concat(frames, ignore_index=True) if frames else predictions_frame(role, [], [])
    out["model"] = spec
    out["n_params"] = loaded.n_params
    out["start_tokens"] = read.prefix_text  # the reading, for captions (brdlib.scoring's module docstring)
    out["max_length"] = pd.array([read.max_length] * len(out), dtype="Int64")
    out["dtype"] = loaded.dtype
    del loaded
    free_memory()
    return out


def evaluate_models(
    cfg: Config,
    models: Mapping[str, str],
    tasks: Sequence[str] | None = None,
    split: str = "test",
    *,
    max_examples: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`evaluate_model` for each ``role -> model reference``; predictions of all, stacked.

    A model that is missing (a student not trained on this profile) fails with its name; pass only what exists.
    """
    import pandas as pd

    frames = []
    for role, ref in models.items():
        frame = evaluate_model(cfg, ref, role, tasks, split, max_examples=max_examples, progress=progress)
        save_predictions(cfg, frame, split)  # per model: a crash later keeps every model already scored
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def save_predictions(cfg: Config, predictions: pd.DataFrame, split: str = "test") -> list[Path]:
    """Per-example predictions, one Parquet file per role, under ``data/<profile>/eval/predictions/<split>/``."""
    folder = artefact_dir(cfg, "eval") / "predictions" / split
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for role, frame in predictions.groupby("role", sort=False):
        path = folder / f"{role}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        paths.append(path)
    return paths


def load_predictions(cfg: Config, roles: Sequence[str] | None = None, split: str = "test") -> pd.DataFrame:
    """Predictions saved by earlier notebooks (all roles, or ``roles``; a missing one fails with the present ones)."""
    import pandas as pd

    folder = artefact_dir(cfg, "eval") / "predictions" / split
    present = sorted(p.stem for p in folder.glob("*.parquet")) if folder.is_dir() else []
    wanted = list(roles) if roles is not None else present
    missing = [r for r in wanted if r not in present]
    if missing:
        raise EvaluateError(f"no saved predictions for {', '.join(missing)} on split {split!r} of profile "
                            f"{cfg.profile!r}; present: {', '.join(present) or 'none'} (run notebooks 04-06 first)")
    if not wanted:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(folder / f"{r}.parquet") for r in wanted], ignore_index=True)


# Accuracy with bootstrap intervals -------------------------------------------------------------------------------


def bootstrap_ci(correct: Sequence[bool] | np.ndarray, samples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (resampling examples); also of paired differences."""
    values = np.asarray(correct, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def bootstrap_ci_of_task_mean(groups: Sequence[np.ndarray], samples: int = 1000, confidence: float = 0.95,
                              seed: int = 0, weights: Sequence[float] | None = None) -> tuple[float, float]:
    """Interval of a mean of per-task accuracies (BIG-bench-Avg; with ``weights``, a weighted mean such as Table 3's
    Average, where each BIG-bench task weighs 1/7 of 1/K): in every bootstrap sample each task's examples are
    resampled on their own, so the tasks' sampling errors combine as independent ones (averaging the tasks' own
    interval bounds would not: it overstates the width)."""
    if not groups:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    per_task = np.stack([np.asarray(g, dtype=float)[rng.integers(0, len(g), size=(samples, len(g)))].mean(axis=1)
                         for g in groups])
    if weights is None:
        means = per_task.mean(axis=0)
    else:
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(groups),) or not np.isclose(w.sum(), 1.0) or (w < 0).any():
            raise EvaluateError(f"weights must be {len(groups)} non-negative numbers summing to 1; got {list(w)}")
        means = w @ per_task
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def table_average_weights(tasks: Sequence[str]) -> dict[str, float] | None:
    """Each task's weight in Table 3's Average (:data:`TABLE_TASKS`' plain mean, BIG-bench-Avg itself the mean of
    its tasks): 1/7 for each of the six tasks and 1/(7K) for each of K BIG-bench tasks; None when ``tasks`` lacks a
    column of it."""
    bigbench = [t for t in tasks if t.startswith("bigbench:")]
    single = [t for t in TABLE_TASKS if t != BIGBENCH_AVG]
    if any(t not in tasks for t in single) or not bigbench:
        return None
    share = 1 / len(TABLE_TASKS)
    return {**{t: share for t in single}, **{t: share / len(bigbench) for t in bigbench}}


def _chance(frame: pd.DataFrame) -> float:
    """Chance accuracy (%) of ``frame``'s examples: the mean of 1/candidates (NaN without ``n_candidates``)."""
    if "n_candidates" not in frame.columns or not len(frame):
        return float("nan")
    return float(100 * np.mean(1 / frame["n_candidates"].to_numpy(dtype=float)))


def _table_average_row(cfg: Config, role: str, by_task: Mapping[str, np.ndarray], chance: Mapping[str, float],
                       rows: Sequence[dict]) -> dict | None:
    """Table 3's Average of one role (:func:`table_average_weights`), its interval by resampling examples within
    each task (:func:`bootstrap_ci_of_task_mean` with the weights); None when the role lacks a column."""
    weights = table_average_weights(list(by_task))
    if weights is None:
        return None
    tasks = list(weights)
    w = [weights[t] for t in tasks]
    low, high = bootstrap_ci_of_task_mean([by_task[t] for t in tasks], cfg.eval.bootstrap_samples,
                                          cfg.eval.confidence, cfg.seed, weights=w)
    value = float(sum(wi * by_task[t].mean() for wi, t in zip(w, tasks, strict=True)))
    counted = [r for r in rows if r["role"] == role and r["task"] in weights]
    summed = {k: None if any(r[k] is None for r in counted) else sum(r[k] for r in counted)
              for k in ("n_ties", "n_truncated")}
    return {"role": role, "task": TABLE_AVERAGE, "value": 100 * value, "n": int(sum(len(by_task[t]) for t in tasks)),
            "n_tasks": len(tasks), "ci_low": 100 * low, "ci_high": 100 * high,
            "chance": float(sum(wi * chance[t] for wi, t in zip(w, tasks, strict=True))), **summed}


def _count(frame: pd.DataFrame, column: str) -> int | None:
    """How many rows of ``frame`` have ``column`` true; None when the frame has no such column (older predictions)."""
    return int(frame[column].sum()) if column in frame.columns else None


def accuracy_table(cfg: Config, predictions: pd.DataFrame, rule: str | None = None,
                   bigbench_average: bool = True, table_average: bool = True) -> pd.DataFrame:
    """Tidy accuracies in percent: ``role, task, value, n, ci_low, ci_high`` (95% bootstrap by default), with
    ``n_ties`` (examples whose best score under ``rule`` is shared, broken as ``eval.tie_break`` says),
    ``n_truncated`` (examples whose context was cut to the model's positions) and ``chance`` (the accuracy of a
    uniform guess: the mean of 1/candidates over the examples).

    Per task; with ``bigbench_average``, BIG-bench tasks are also averaged into ``bigbench_avg`` (mean of the
    per-task accuracies, as the paper's BIG-bench-Avg; ``n`` counts its examples, ``n_tasks`` its tasks, and the
    two counts are summed over them); with ``table_average``, a role with every Table 3 column also gets
    ``average`` (:data:`TABLE_AVERAGE`: the plain mean of the seven columns, its interval from resampling examples
    within each task, its chance the same mean of the tasks' chance levels).
    """
    import pandas as pd

    rule = rule or cfg.eval.rule
    if rule not in ("mean", "sum"):
        raise EvaluateError(f"unknown scoring rule {rule!r}; accepted: 'mean', 'sum'")
    column = f"correct_{rule}"
    samples, level = cfg.eval.bootstrap_samples, cfg.eval.confidence
    rows = []
    for role, by_role in predictions.groupby("role", sort=False):
        bb_groups, bb_counts, bb_chance = [], [], []
        by_task, chance = {}, {}
        for task, frame in by_role.groupby("task", sort=False):
            correct = frame[column].to_numpy(dtype=bool)
            by_task[task], chance[task] = correct, _chance(frame)
            low, high = bootstrap_ci(correct, samples, level, cfg.seed)
            counts = {"n_ties": _count(frame, f"tied_{rule}"), "n_truncated": _count(frame, "truncated")}
            rows.append({"role": role, "task": task, "value": 100 * correct.mean(), "n": len(correct),
                         "n_tasks": 1, "ci_low": 100 * low, "ci_high": 100 * high, "chance": chance[task], **counts})
            if task.startswith("bigbench:"):
                bb_groups.append(correct)
                bb_counts.append(counts)
                bb_chance.append(chance[task])
        if bigbench_average and bb_groups:
            low, high = bootstrap_ci_of_task_mean(bb_groups, samples, level, cfg.seed)
            mean = float(np.mean([g.mean() for g in bb_groups]))
            summed = {k: None if any(c[k] is None for c in bb_counts) else sum(c[k] for c in bb_counts)
                      for k in ("n_ties", "n_truncated")}
            rows.append({"role": role, "task": BIGBENCH_AVG, "value": 100 * mean,
                         "n": int(sum(len(g) for g in bb_groups)), "n_tasks": len(bb_groups),
                         "ci_low": 100 * low, "ci_high": 100 * high, "chance": float(np.mean(bb_chance)), **summed})
        average = _table_average_row(cfg, str(role), by_task, chance, rows) if table_average else None
        if average is not None:
            rows.append(average)
    out = pd.DataFrame(rows, columns=["role", "task", "value", "n", "n_tasks", "ci_low", "ci_high", "chance",
                                      "n_ties", "n_truncated"])
    return out.astype({"n_ties": "Int64", "n_truncated": "Int64"})


def paper_columns(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Only the paper's Table 3 columns (the six tasks and ``bigbench_avg``), in the paper's order."""
    keep = accuracy[accuracy["task"].isin(TABLE_TASKS)].copy()
    keep["_order"] = keep["task"].map({t: i for i, t in enumerate(TABLE_TASKS)})
    return keep.sort_values(["_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def results_table(cfg: Config, accuracy: pd.DataFrame, table: str, *, decimals: int = 1,
                  roles: Sequence[str] | None = None, **where: str) -> pd.DataFrame:
    """Ours beside the paper's ``table`` (``where`` picks its rows, e.g. ``setting='blind'``), with the
    Average over the paper's columns, and per cell of ours its 95% interval and ``n``.

    The wide table has per task ``<task>: ours (<profile>)``, ``<task>: 95% CI``, ``<task>: n``, ``<task>: ties``
    and ``<task>: truncated`` (:func:`accuracy_table`'s counts; empty where unknown), ``<task>: paper`` and
    ``<task>: delta``; rows are the paper's roles, then ours it lacks. ``roles`` keeps only those of ours
    (default: every role in ``accuracy``); the paper's rows are all kept, empty where ours lacks them.
    """
    import pandas as pd

    paper = paper_rows(table, **where)
    tasks = [t for t in dict.fromkeys(paper["task"]) if t != "average"]
    if roles is not None:
        unknown = [r for r in roles if r not in set(accuracy["role"])]
        if unknown:
            raise EvaluateError(f"roles {unknown} have no accuracies; present: {sorted(set(accuracy['role']))}")
        accuracy = accuracy[accuracy["role"].isin(list(roles))]
    ours = accuracy[accuracy["task"].isin(tasks)]
    ours = with_average(ours[["role", "task", "value"]], tasks)
    wide = compare_with_paper(ours, table, cfg.profile, decimals=decimals, **where)
    ci = {(r.role, r.task): f"[{r.ci_low:.{decimals}f}, {r.ci_high:.{decimals}f}]"
          for r in accuracy.itertuples() if r.task in tasks}
    n = {(r.role, r.task): int(r.n) for r in accuracy.itertuples() if r.task in tasks}
    counts = {c: {(r.role, r.task): getattr(r, c) for r in accuracy.itertuples() if r.task in tasks}
              for c in ("n_ties", "n_truncated") if c in accuracy.columns}
    for task in tasks:
        at = list(wide.columns).index(f"{task}: ours ({cfg.profile})") + 1
        wide.insert(at, f"{task}: 95% CI", [ci.get((role, task), "") for role in wide["role"]])
        wide.insert(at + 1, f"{task}: n", pd.array([n.get((role, task)) for role in wide["role"]], dtype="Int64"))
        for k, (c, label) in enumerate([("n_ties", "ties"), ("n_truncated", "truncated")]):
            values = [counts.get(c, {}).get((role, task)) for role in wide["role"]]
            wide.insert(at + 2 + k, f"{task}: {label}",
                        pd.array([None if pd.isna(v) else int(v) for v in values], dtype="Int64"))
    return wide


def paired_difference(cfg: Config, predictions: pd.DataFrame, role: str, baseline: str,
                      rule: str | None = None) -> pd.DataFrame:
    """Per task, accuracy of ``role`` minus ``baseline`` on the examples both scored, in points, with a paired
    bootstrap interval (the same resampled examples for both; tighter than comparing two separate intervals).

    Columns: ``task, n, role, baseline, delta, ci_low, ci_high, outcome`` (``better``/``tied``/``worse`` by the
    point difference, as the paper's Figure 3 counts tasks).
    """
    import pandas as pd

    rule = rule or cfg.eval.rule
    if rule not in ("mean", "sum"):
        raise EvaluateError(f"unknown scoring rule {rule!r}; accepted: 'mean', 'sum'")
    present = set(predictions["role"])
    missing = [r for r in (role, baseline) if r not in present]
    if missing:
        raise EvaluateError(f"no predictions for {missing}; present: {sorted(present)}")
    column = f"correct_{rule}"
    keys = ["task", "example_id"]
    a = predictions[predictions["role"] == role][[*keys, column]]
    b = predictions[predictions["role"] == baseline][[*keys, column]]
    both = a.merge(b, on=keys, suffixes=("_a", "_b"))
    rows = []
    for task, frame in both.groupby("task", sort=False):
        diff = frame[f"{column}_a"].to_numpy(dtype=float) - frame[f"{column}_b"].to_numpy(dtype=float)
        low, high = bootstrap_ci(diff, cfg.eval.bootstrap_samples, cfg.eval.confidence, cfg.seed)
        delta = 100 * diff.mean()
        rows.append({"task": task, "n": len(diff), role: 100 * frame[f"{column}_a"].mean(),
                     baseline: 100 * frame[f"{column}_b"].mean(), "delta": delta, "ci_low": 100 * low,
                     "ci_high": 100 * high,
                     "outcome": "better" if delta > 0 else "worse" if delta < 0 else "tied"})
    return pd.DataFrame(rows, columns=["task", "n", role, baseline, "delta", "ci_low", "ci_high", "outcome"])


def caption(cfg: Config, predictions: pd.DataFrame, what: str) -> str:
    """One line naming profile, models, data sizes and the readings (:func:`readings`) for a results table."""
    models = predictions.drop_duplicates("role")
    names = ", ".join(f"{r.role} = {Path(str(r.model)).name} ({r.n_params / 1e6:.0f}M)" for r in models.itertuples())
    per_task = predictions.groupby(["role", "task"]).size()
    sizes = f"n per task {per_task.min()}-{per_task.max()}" if len(per_task) else "no examples"
    tasks = predictions["task"].nunique()
    return (f"{what} — profile {cfg.profile} ({cfg.scale_note}); {tasks} tasks, {sizes}; models: {names}; "
            f"{readings(cfg, predictions)}")


def readings(cfg: Config, predictions: pd.DataFrame) -> str:
    """How the text was read (``brdlib.scoring``'s module docstring): start tokens, truncation, ties, with counts."""
    starts: dict[str, list[str]] = {}
    if "start_tokens" in predictions.columns:
        for r in predictions.drop_duplicates("role").itertuples():
            starts.setdefault(repr(r.start_tokens) if r.start_tokens else "none", []).append(str(r.role))
    start = "; ".join(f"{tok} for {', '.join(roles)}" for tok, roles in starts.items()) or "not recorded"
    bound = f", at most {cfg.eval.max_length}" if cfg.eval.max_length else ""
    n = len(predictions)
    truncated = (f"{int(predictions['truncated'].sum())} of {n} examples truncated" if "truncated" in predictions
                 else "truncation not recorded")
    column = f"tied_{cfg.eval.rule}"
    ties = f"{int(predictions[column].sum())} of {n} examples tied" if column in predictions else "ties not recorded"
    how = "at random, seeded by task and example," if cfg.eval.tie_break == "random" else "by the first candidate"
    dtypes = "/".join(sorted(set(predictions["dtype"]))) if "dtype" in predictions and n else cfg.dtype
    return (f"read with special_tokens={cfg.eval.special_tokens} (start tokens: {start}); contexts left-truncated "
            f"to each model's positions{bound} ({truncated}); ties broken {how} ({ties}, {cfg.eval.rule} rule); "
            f"scored in {dtypes}")
