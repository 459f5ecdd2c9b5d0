"""Zero-shot multiple-choice scoring (paper §3.3): log-probability of each candidate given the prompt.

The paper picks the candidate with the highest *average per-token* log-probability; every score here
carries the sum and the token count too, so the sum rule is available.

Tokenisation follows lm-evaluation-harness: trailing whitespace of the context moves to the
continuation, the pair is encoded whole and the continuation is the tail beyond the context's tokens.

Speed: an example's prompt is run once, its KV cache is replicated for each candidate, and only the
candidates' tokens are run again, batched over examples sorted by length. :func:`score_reference`
is the plain one-sequence-at-a-time implementation the batched scorer is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch


@dataclass(frozen=True)
class CandidateScore:
    """Log-probability of one continuation: its sum over tokens, and the number of tokens."""

    sum_logprob: float
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / max(self.n_tokens, 1)


def _needs_bos(tokenizer: Any, model: Any | None) -> bool:
    """lm-eval adds BOS for Gemma models only (they degrade badly without it)."""
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    return model_type.startswith("gemma") and tokenizer.bos_token_id is not None


def encode_pair(tokenizer: Any, context: str, continuation: str, add_bos: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split the way lm-evaluation-harness splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ctx, cont = whole[:n_ctx], whole[n_ctx:]
    if add_bos:
        ctx = [tokenizer.bos_token_id, *ctx]
    if not ctx:  # an empty context conditions on the end-of-text token, as lm-eval does
        ctx = [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id]
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens after context {context[-40:]!r}")
    return ctx, cont


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_reference(model: Any, tokenizer: Any, context: str, continuation: str) -> CandidateScore:
    """One unbatched forward pass over context + continuation; the ground truth for the batched scorer."""
    ctx, cont = encode_pair(tokenizer, context, continuation, add_bos=_needs_bos(tokenizer, model))
    ids = torch.tensor([ctx + cont], device=_device(model))
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=ids.device)
    targets = torch.tensor(cont, device=ids.device)
    return CandidateScore(float(logprobs[positions, targets].sum()), len(cont))


@torch.no_grad()
def _score_batch(model: Any, pad_id: int, batch: list[tuple[list[int], list[list[int]]]]) -> list[list[CandidateScore]]:
    """Score several examples at once: contexts left-padded and run once, candidates on a replicated cache."""
    device = _device(model)
    n_ctx = max(len(ctx) for ctx, _ in batch)
    ctx_ids = torch.full((len(batch), n_ctx), pad_id, dtype=torch.long)
    ctx_mask = torch.zeros((len(batch), n_ctx), dtype=torch.long)
    for row, (ctx, _) in enumerate(batch):
        ctx_ids[row, n_ctx - len(ctx):] = torch.tensor(ctx)
        ctx_mask[row, n_ctx - len(ctx):] = 1
    ctx_ids, ctx_mask = ctx_ids.to(device), ctx_mask.to(device)
    ctx_pos = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
    owners = [row for row, (_, cands) in enumerate(batch) for _ in cands]
    cands = [cand for _, cs in batch for cand in cs]
    n_cand = max(len(c) for c in cands)
    # Only the last position's logits are needed from the prompt (they predict each candidate's first
    # token), so the output layer runs once per prompt, not once per prompt token.
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=ctx_pos, use_cache=n_cand > 1,
                logits_to_keep=1)
    last_logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    if n_cand == 1:  # single-token candidates: the prompt's pass already scored them all
        return [[CandidateScore(float(last_logprobs[row, c[0]]), 1) for c in cs] for row, (_, cs) in enumerate(batch)]

    cand_ids = torch.full((len(cands), n_cand), pad_id, dtype=torch.long)
    cand_mask = torch.zeros((len(cands), n_cand), dtype=torch.long)
    for i, cand in enumerate(cands):
        cand_ids[i, : len(cand)] = torch.tensor(cand)
        cand_mask[i, : len(cand)] = 1
    owner = torch.tensor(owners, device=device)
    cand_ids, cand_mask = cand_ids.to(device), cand_mask.to(device)
    cache = out.past_key_values
    cache.reorder_cache(owner)  # one copy of the example's prompt cache per candidate
    ctx_len = ctx_mask.sum(-1)[owner]
    cand_pos = ctx_len[:, None] + torch.arange(n_cand, device=device)[None, :]
    logits = model(
        input_ids=cand_ids,
        attention_mask=torch.cat([ctx_mask[owner], cand_mask], dim=1),
        position_ids=cand_pos,
        past_key_values=cache,
        use_cache=False,
    ).logits
    cand_logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)

    results: list[list[CandidateScore]] = [[] for _ in batch]
    for i, cand in enumerate(cands):
        first = last_logprobs[owners[i], cand[0]]
        rest = torch.zeros((), device=device)
        if len(cand) > 1:
            targets = cand_ids[i, 1: len(cand)]
            rest = cand_logprobs[i, torch.arange(len(cand) - 1, device=device), targets].sum()
        results[owners[i]].append(CandidateScore(float(first + rest), len(cand)))
    return results


MAX_BATCH_LOGITS = 2**28  # output-layer elements per candidate pass (1 GiB in fp32), whatever batch_size says


def plan_batches(units: Sequence[tuple[Any, Any, list[int], list[list[int]]]], order: Sequence[int],
                 batch_size: int, vocab_size: int, max_logits: int = MAX_BATCH_LOGITS) -> list[list[int]]:
    """Split ``order`` (unit indices) into batches of at most ``batch_size`` prompts whose candidate pass
    (candidates x longest candidate x vocabulary logits) stays within ``max_logits``; a prompt whose candidates
    alone exceed it gets a batch of its own. Without this bound, 8 BIG-bench prompts with 10 candidates of
    ~300 tokens each ask a 152K-vocabulary model for ~15 GB of logits."""
    batches: list[list[int]] = []
    current: list[int] = []
    n_cands = longest = 0
    for u in order:
        conts = units[u][3]
        more, length = n_cands + len(conts), max(longest, max(len(c) for c in conts))
        if current and (len(current) >= batch_size or more * length * vocab_size > max_logits):
            batches.append(current)
            current, more, length = [], len(conts), max(len(c) for c in conts)
        current.append(u)
        n_cands, longest = more, length
    if current:
        batches.append(current)
    return batches


def _vocab_size(model: Any, tokenizer: Any) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer))


def score_candidates(
    model: Any,
    tokenizer: Any,
    groups: Sequence[tuple[str, Sequence[str]]],
    batch_size: int = 8,
    progress: bool = False,
    max_logits: int = MAX_BATCH_LOGITS,
) -> list[list[CandidateScore]]:
    """Scores of every candidate of every (prompt, candidates) group, in the input order.

    ``batch_size`` counts examples; their candidates ride along, within a memory bound of ``max_logits``
    output-layer elements per batch (:func:`plan_batches`). Examples are sorted by length (longest first, so an
    out-of-memory error shows at once) and the results put back in order.
    """
    from tqdm.auto import tqdm

    add_bos = _needs_bos(tokenizer, model)
    encoded = []
    for prompt, candidates in groups:
        if not candidates:
            raise ValueError(f"prompt {prompt[:60]!r} has no candidates")
        pairs = [encode_pair(tokenizer, prompt, c, add_bos=add_bos) for c in candidates]
        # The context tokens can differ between candidates when a candidate merges with the prompt's
        # last token; such a group is scored per distinct context so every score stays exact.
        encoded.append(pairs)
    units: list[tuple[int, list[int], list[int], list[int]]] = []  # (group, candidate indices, ctx, conts)
    for g, pairs in enumerate(encoded):
        by_ctx: dict[tuple[int, ...], list[int]] = {}
        for j, (ctx, _) in enumerate(pairs):
            by_ctx.setdefault(tuple(ctx), []).append(j)
        for ctx, idxs in by_ctx.items():
            units.append((g, idxs, list(ctx), [pairs[j][1] for j in idxs]))
    order = sorted(range(len(units)), key=lambda u: -len(units[u][2]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[list[CandidateScore | None]] = [[None] * len(pairs) for pairs in encoded]
    bar = tqdm(total=len(units), desc="scoring", unit="prompt", disable=not progress)
    for planned in plan_batches(units, order, batch_size, _vocab_size(model, tokenizer), max_logits):
        chunk = [units[u] for u in planned]
        scored = _score_batch(model, pad_id, [(ctx, conts) for _, _, ctx, conts in chunk])
        for (g, idxs, _, _), scores in zip(chunk, scored, strict=True):
            for j, s in zip(idxs, scores, strict=True):
                results[g][j] = s
        bar.update(len(chunk))
    bar.close()
    return [[s for s in row if s is not None] for row in results]


def predict(scores: Sequence[CandidateScore], rule: Literal["mean", "sum"] = "mean") -> int:
    """Index of the chosen candidate: highest mean (the paper's rule) or sum of token log-probabilities."""
    if rule not in ("mean", "sum"):
        raise ValueError(f"unknown scoring rule {rule!r}; accepted: 'mean', 'sum'")
    values = [s.mean_logprob if rule == "mean" else s.sum_logprob for s in scores]
    return max(range(len(values)), key=values.__getitem__)


# Cached scoring of task examples --------------------------------------------------------------------


def model_fingerprint(model: Any) -> str:
    """A short hash that changes when the weights or the architecture change.

    Hashes the config and, per parameter, its name, shape and a strided sample of ~1k values:
    cheap even for 13B models, and any training step moves the sample.
    """
    import hashlib

    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)].float().cpu().numpy().tobytes()
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


class ScoreCache:
    """Scores on disk (SQLite), keyed by (model fingerprint, task, example id, candidate).

    SQLite commits each batch atomically, so a run killed mid-way keeps every finished batch.
    """

    def __init__(self, path: Any) -> None:
        import sqlite3
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scores (model TEXT, task TEXT, example TEXT, candidate TEXT, "
            "sum_logprob REAL, n_tokens INTEGER, PRIMARY KEY (model, task, example, candidate))"
        )

    def get(self, model: str, task: str, example: str, candidate: str) -> CandidateScore | None:
        row = self._db.execute(
            "SELECT sum_logprob, n_tokens FROM scores WHERE model=? AND task=? AND example=? AND candidate=?",
            (model, task, example, candidate),
        ).fetchone()
        return CandidateScore(row[0], row[1]) if row else None

    def put_many(self, rows: Sequence[tuple[str, str, str, str, CandidateScore]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                [(m, t, e, c, s.sum_logprob, s.n_tokens) for m, t, e, c, s in rows],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def score_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Any],
    cache: ScoreCache | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[list[CandidateScore]]:
    """Scores of each example's candidates (:class:`brdlib.tasks.Example`: task, example_id, prompt, continuations).

    What is scored is ``prompt + continuation`` (the candidate behind the task's target delimiter).
    With a cache, only (example, continuation) pairs not scored before by these exact weights are run.
    """
    fingerprint = model_fingerprint(model) if cache is not None else ""
    results: list[list[CandidateScore | None]] = []
    todo: list[int] = []
    for i, ex in enumerate(examples):
        cached = [cache.get(fingerprint, ex.task, ex.example_id, c) if cache else None for c in ex.continuations]
        results.append(cached)
        if any(s is None for s in cached):
            todo.append(i)
    from tqdm.auto import tqdm

    step = max(batch_size * 8, 1)  # commit to the cache every few batches
    bar = tqdm(total=len(todo), desc="scoring", unit="ex", disable=not progress or not todo)
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        scored = score_candidates(model, tokenizer, [(examples[i].prompt, examples[i].continuations) for i in chunk],
                                  batch_size=batch_size)
        bar.update(len(chunk))
        rows = []
        for i, scores in zip(chunk, scored, strict=True):
            results[i] = list(scores)
            ex = examples[i]
            rows += [(fingerprint, ex.task, ex.example_id, c, s) for c, s in zip(ex.continuations, scores, strict=True)]
        if cache is not None:
            cache.put_many(rows)
    bar.close()
    return [[s for s in row if s is not None] for row in results]
