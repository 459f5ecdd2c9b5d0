"""Layer-wise probing of the student before and after BRD (Figure 4, A.5; notebook 08).

    from brdlib import probing
    probes = probing.probe_models(cfg, {"student_base": "student", "brd": "brd"})   # role, task, layer, accuracy

**Figure 4 (A.5).** Per layer, the hidden states of each task input (the filled prompt) are averaged over its
tokens (attention-masked), and an L2-regularised logistic regression (scikit-learn) predicts the gold label; the
inverse strength C is chosen on the tune split from ``analysis.probing_c_grid``; the accuracy is on the test split.
Layer 0 is the embedding output. Only tasks with one fixed candidate set (the Table 9 tasks) are probed.
A.5 probes on each task's training set; ours is cut (stratified, seeded) to ``analysis.probing_max_train`` inputs,
and tune/test to ``analysis.probing_max_eval``: each input's states cost (layers + 1) x hidden x 4 bytes (XGLM-564M:
100 KB), so XNLI's 392,702 training inputs would be 40 GB per model; a set over ``analysis.probing_max_feature_gb``
is refused before anything is encoded.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from brdlib.blind import BLIND_ROLES
from brdlib.config import Config
from brdlib.evaluate import bootstrap_ci
from brdlib.models import free_memory, load_ref, model_label
from brdlib.report import CHANCE_GID, n_label
from brdlib.scoring import encode_text, reading
from brdlib.tasks import TABLE9_TASKS, gold_label, load_examples, stratified_sample

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "PROBE_STATE_BYTES", "ProbingError", "check_probe_memory", "mean_pooled_states", "probe_feature_bytes",
    "probe_layer", "probe_models", "probing_data", "probing_figure", "probing_summary", "probing_tasks",
]

log = logging.getLogger(__name__)


class ProbingError(ValueError):
    """A probing request that cannot run (named, with what is accepted)."""


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

    read = reading(model, tokenizer, special_tokens, max_length)
    encoded = [encode_text(tokenizer, t, read) for t in texts]
    if read.max_length is not None and any(len(ids) > read.max_length for ids in encoded):
        log.info("%d of %d texts cut to their last %d tokens for probing",
                 sum(len(ids) > read.max_length for ids in encoded), len(encoded), read.max_length)
        encoded = [ids[-read.max_length:] for ids in encoded]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ProbingError(f"texts {empty[:5]} encode to no tokens; probing needs at least one token per text")
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
        raise ProbingError("no texts to encode")
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

    wanted = cfg.analysis.probing_tasks
    if wanted is not None:
        bad = [t for t in wanted if t not in TABLE9_TASKS]
        if bad:
            raise ProbingError(f"analysis.probing_tasks {bad} cannot be probed; accepted: {', '.join(TABLE9_TASKS)}")
        return list(wanted)
    tasks = [t for t in cfg.data.tasks if t in TABLE9_TASKS]
    if not tasks:
        raise ProbingError(f"profile {cfg.profile!r} has no Table 9 task to probe (data.tasks: {cfg.data.tasks}); "
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
        raise ProbingError(
            f"probing {task}: {split_text} inputs x {n_states} layers x {hidden} x {PROBE_STATE_BYTES} bytes = "
            f"{need / 1e9:.1f} GB of hidden states, over analysis.probing_max_feature_gb={limit}; bound the inputs "
            f"with analysis.probing_max_train / analysis.probing_max_eval (now {cfg.analysis.probing_max_train} / "
            f"{cfg.analysis.probing_max_eval}) or raise the limit")
    return need


def probing_data(cfg: Config, tasks: Sequence[str] | None = None) -> dict[str, dict[str, list[Any]]]:
    """Per task, its train (capped at ``analysis.probing_max_train``), tune and test examples (capped at
    ``analysis.probing_max_eval``), label-stratified and seeded. :func:`probe_models` refuses sets whose hidden
    states exceed ``analysis.probing_max_feature_gb`` (:func:`check_probe_memory`)."""

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
                rows.append({"role": role, "model": model_label(loaded),
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


def probing_figure(probes: pd.DataFrame, title: str = "", samples: int = 1000, confidence: float = 0.95) -> Figure:
    """As the paper's Figure 4: test accuracy (%) against layer, one panel per task, one line per model, each point
    with its 95% bootstrap interval over the task's test examples (a 0/1 vector of ``n_test`` with the probe's
    correct count: the same interval as resampling the examples themselves); dashed: the majority-class accuracy,
    a probe's chance level; n in each panel's title."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    tasks = list(dict.fromkeys(probes["task"]))
    roles = list(dict.fromkeys(probes["role"]))
    colours = dict(zip(roles, sns.color_palette("colorblind", len(roles)), strict=True))
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.7 * cols, 2.9 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        part = probes[probes["task"] == task]
        for role in roles:
            line = part[part["role"] == role].sort_values("layer")
            bounds = [_probe_interval(a, int(n), samples, confidence)
                      for a, n in zip(line["test_accuracy"], line["n_test"], strict=True)]
            err = np.array([[a - lo for a, (lo, _) in zip(line["test_accuracy"], bounds, strict=True)],
                            [hi - a for a, (_, hi) in zip(line["test_accuracy"], bounds, strict=True)]])
            ax.errorbar(line["layer"], line["test_accuracy"], yerr=err.reshape(2, -1), marker="o", ms=4, capsize=2,
                        lw=1.2, elinewidth=0.7, color=colours[role], label=role)
        ax.axhline(float(part["majority"].iloc[0]), ls="--", color="black", lw=1, label="chance (majority class)",
                   gid=CHANCE_GID)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{task} ({n_label(part['n_test'].tolist())})", fontsize=10)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("probe accuracy (%)")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8)
    note = "points: 95% bootstrap intervals over test examples; dashed: majority class"
    fig.suptitle(textwrap.fill(f"{title + '; ' if title else ''}{note}", 140), y=1.03, fontsize=10)
    fig.tight_layout()
    return fig


def _probe_interval(accuracy: float, n: int, samples: int, confidence: float) -> tuple[float, float]:
    """The bootstrap interval (%) of a probe's test accuracy from its correct count and n."""
    correct = int(round(accuracy * n / 100))
    low, high = bootstrap_ci(np.r_[np.ones(correct), np.zeros(n - correct)], samples, confidence)
    return 100 * low, 100 * high
