"""Zero-shot multiple-choice scoring (paper §3.3): log-probability of each candidate given the prompt.

The paper picks the candidate with the highest *average per-token* log-probability; every score here
carries the sum and the token count too, so the sum rule is available.

Tokenisation follows lm-evaluation-harness: trailing whitespace of the context moves to the
continuation, the pair is encoded whole and the continuation is the tail beyond the context's tokens.

**The reading** (:class:`Reading`; the same for scoring, Table 5's probabilities and the probes):

* *Start token* (``eval.special_tokens``). ``tokenizer`` (default): the text is read as training reads it
  (``assemble.encode_passages`` keeps the tokenizer's default), i.e. with the tokens the tokenizer's own template
  puts before a text (XGLM's ``</s>``, Llama's ``<s>``, none for GPT-2/Qwen/SmolLM2) in front of the context. This
  is what lm-evaluation-harness does since 0.4.10 (read in 0.4.13): ``HFLM.tok_encode`` calls the tokenizer with its
  default ``add_special_tokens`` unless ``add_bos_token`` is set, and skips them when the text already starts with
  them (``has_bos_prefix``); ``_encode_pair`` encodes context + continuation and the context that way and splits.
  Tokens a template *appends* (``$A </s>``) are dropped: a candidate is not the end of a text. (lm-eval would count
  them into the context's length and shift the split by one; we do not copy that.) ``none``: no special tokens,
  except a BOS for Gemma models (lm-eval's rule up to 0.4.9).
  An empty context (Table 5's whole texts) conditions on the start tokens, or, for a tokenizer with none, on the
  end-of-text token that precedes every passage in training. lm-eval conditions it on the BOS token (else EOS)
  whatever the template: XGLM's ``<s>``, which its training never puts first, or SmolLM2's chat marker
  ``<|im_start|>``; we do not copy that.
* *Truncation*. The input is bounded by the model's positions (``n_positions``, ``max_position_embeddings`` or
  ``n_ctx`` of its config, as lm-eval's ``resolve_max_length``; XGLM's sinusoidal table is computed on demand but
  trained to its ``max_position_embeddings``, 2,048) or lower by ``eval.max_length``. As in lm-eval's
  ``_loglikelihood_tokens``, the input is the last ``max_length + 1`` tokens of context + continuation less the last
  one: the context is cut from the left, the continuation stays whole (one longer than ``max_length`` is an error;
  Table 5 reads such a text in lm-eval's rolling windows, :func:`fit_windows`). Each score says if it was truncated.
* *Ties* (``eval.tie_break``). Equal scores (common in bf16) go to a candidate chosen by a hash of (seed, task,
  example id) among the tied ones (``random``), repeatable and favouring no position; ``first`` keeps the first.

Speed: an example's prompt is run once. Packed (the default for the common architectures): one row per example,
the context then every candidate but its last token, under a 4D attention mask that lets each candidate see the
context and its own earlier tokens only, at the positions it would have after the context; logits only for the
row's tail. Otherwise (``method="kv"``): the prompts are run, their KV cache is replicated for each candidate, and
the candidates' tokens are run on it. Either way batched over examples sorted by length. :func:`score_reference`
is the plain one-sequence-at-a-time implementation both are tested against.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from brdlib.models import max_positions

log = logging.getLogger(__name__)

__all__ = [
    "CPU_PASS_TOKENS", "MAX_BATCH_LOGITS", "PACKED_MODEL_TYPES", "SPECIAL_TOKENS", "TIE_BREAKS", "CandidateScore",
    "Reading", "ScoreCache", "ScoringError",
    "TextProb", "TextProbCache", "encode_pair", "encode_text", "fit_pair", "fit_windows", "model_fingerprint",
    "model_max_length", "plan_batches", "predict", "reading", "score_candidates", "score_examples", "score_reference",
    "template_tokens", "text_probs", "tie_key", "tied", "token_logprobs",
]

SPECIAL_TOKENS = ("tokenizer", "none")
"""Readings of the start token (``eval.special_tokens``): the tokenizer's own, or none (Gemma: BOS)."""
TIE_BREAKS = ("random", "first")
"""Tie breaking (``eval.tie_break``): a seeded choice among the tied candidates, or the first of them."""
@dataclass(frozen=True)
class CandidateScore:
    """Log-probability of one continuation: its sum over tokens, the number of tokens, and whether its context
    was cut from the left to fit the model's positions."""

    sum_logprob: float
    n_tokens: int
    truncated: bool = False

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / max(self.n_tokens, 1)


@dataclass(frozen=True)
class Reading:
    """How a model reads scored text: the tokens put before every text and the longest input (module docstring)."""

    special_tokens: str = "tokenizer"
    prefix: tuple[int, ...] = ()
    prefix_text: str = ""
    max_length: int | None = None

    @property
    def key(self) -> str:
        """Names the reading in score caches, so scores read otherwise are never reused."""
        return f"special={self.special_tokens};prefix={','.join(map(str, self.prefix))};max={self.max_length}"


def model_max_length(model: Any) -> int | None:
    """The model's number of positions (:func:`brdlib.models.max_positions`); ``None`` for a model without one
    (then nothing is truncated unless ``max_length`` is given)."""
    found = max_positions(getattr(model, "config", None))
    return found[0] if found else None


def template_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer's template puts before and after a text (by its default encoding)."""
    probe = "Hello world"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for at in range(len(full) - len(plain) + 1):
        if full[at:at + len(plain)] == plain:
            return full[:at], full[at + len(plain):]
    raise ValueError(f"tokenizer {type(tokenizer).__name__} encodes {probe!r} as {full} by default but as {plain} "
                     "without special tokens, not as that text between special tokens; use eval.special_tokens=none")


def reading(model: Any, tokenizer: Any, special_tokens: str = "tokenizer", max_length: int | None = None) -> Reading:
    """The :class:`Reading` of ``model``: its start tokens under ``special_tokens`` and its input bound, the model's
    positions or ``max_length`` if lower."""
    if special_tokens not in SPECIAL_TOKENS:
        raise ValueError(f"unknown special_tokens {special_tokens!r}; accepted: 'tokenizer', 'none'")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length {max_length} must be a positive number of tokens (or None: the model's)")
    if special_tokens == "tokenizer":
        prefix = template_tokens(tokenizer)[0]
    else:  # lm-eval <= 0.4.9: no special tokens, but BOS for Gemma models (they degrade badly without it)
        model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
        gemma = model_type.startswith("gemma") and tokenizer.bos_token_id is not None
        prefix = [tokenizer.bos_token_id] if gemma else []
    positions = model_max_length(model)
    bound = min(b for b in (positions, max_length) if b is not None) if positions or max_length else None
    return Reading(special_tokens, tuple(prefix), tokenizer.decode(prefix) if prefix else "", bound)


def encode_text(tokenizer: Any, text: str, read: Reading | None = None) -> list[int]:
    """Token ids of one whole text as ``read`` reads it: its start tokens (unless the text already starts with them,
    as lm-eval's ``has_bos_prefix``), then the text; nothing appended, nothing truncated."""
    return [*_start_tokens(text, read), *tokenizer(text, add_special_tokens=False)["input_ids"]]


def _start_tokens(text: str, read: Reading | None) -> list[int]:
    """``read``'s start tokens, none when ``text`` already starts with them (lm-eval's ``has_bos_prefix``)."""
    if read is None or (read.prefix_text and text.startswith(read.prefix_text)):
        return []
    return list(read.prefix)


def encode_pair(tokenizer: Any, context: str, continuation: str,
                read: Reading | None = None) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split the way lm-evaluation-harness splits them, with the start tokens
    of ``read`` (default: none) before the context; not truncated (:func:`fit_windows`)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    text = context + continuation
    prefix = _start_tokens(text, read)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    ctx, cont = [*prefix, *whole[:n_ctx]], whole[n_ctx:]
    if not ctx:  # an empty context conditions on the end-of-text token (module docstring)
        start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        ctx, cont = (cont[:1], cont[1:]) if cont and cont[0] == start else ([start], cont)
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens after context {context[-40:]!r}")
    return ctx, cont


def fit_windows(ctx: list[int], cont: list[int], max_length: int | None) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) pieces whose input (both less the last token) fits ``max_length`` positions, as
    lm-eval reads them: a continuation that fits keeps the last ``max_length + 1 - len(cont)`` context tokens
    (``_loglikelihood_tokens``); a longer one is cut into windows of ``max_length`` tokens, each after the tokens
    before it as far as they fit (``loglikelihood_rolling``: ``get_rolling_token_windows`` with one token of
    context, ``make_disjoint_window``). One piece, unchanged, when it fits."""
    if max_length is None or len(ctx) + len(cont) - 1 <= max_length:
        return [(ctx, cont)]
    stream = ctx + cont
    pieces = []
    for start in range(0, len(cont), max_length):
        piece = cont[start:start + max_length]
        pieces.append((stream[: len(ctx) + start][-(max_length + 1 - len(piece)):], piece))
    return pieces


def fit_pair(ctx: list[int], cont: list[int], max_length: int | None) -> tuple[list[int], bool]:
    """The context cut from the left so context + continuation (less its last token) fit ``max_length``, and whether
    it was cut; a continuation longer than ``max_length`` is an error (lm-eval asserts the same)."""
    if max_length is not None and len(cont) > max_length:
        raise ValueError(f"a continuation of {len(cont)} tokens is longer than the {max_length} positions the model "
                         "reads (eval.max_length or the model's own); it cannot be scored whole")
    (fitted, _), = fit_windows(ctx, cont, max_length)
    return fitted, len(fitted) < len(ctx)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def score_reference(model: Any, tokenizer: Any, context: str, continuation: str, special_tokens: str = "tokenizer",
                    max_length: int | None = None) -> CandidateScore:
    """One unbatched forward pass over context + continuation (less its last token, which is no input), read as
    :func:`reading` says; the ground truth for the batched scorer."""
    read = reading(model, tokenizer, special_tokens, max_length)
    ctx, cont = encode_pair(tokenizer, context, continuation, read)
    ctx, truncated = fit_pair(ctx, cont, read.max_length)
    ids = torch.tensor([(ctx + cont)[:-1]], device=_device(model))
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -len(cont):].float(), dim=-1)
    targets = torch.tensor(cont, device=ids.device)
    return CandidateScore(float(logprobs[torch.arange(len(cont), device=ids.device), targets].sum()), len(cont),
                          truncated)


@torch.no_grad()
def _score_batch(model: Any, pad_id: int, batch: list[tuple[list[int], list[list[int]]]]) -> list[list[CandidateScore]]:
    """Score several examples at once: contexts left-padded and run once, candidates on a replicated cache.

    Only a candidate's tokens but its last are input (the last is only predicted), so the positions used stay
    below ``len(ctx) + len(cand) - 1``, which :func:`fit_pair` keeps within the model's."""
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
    n_in = max(len(c) for c in cands) - 1  # candidate tokens that are input
    # Only the last position's logits are needed from the prompt (they predict each candidate's first
    # token), so the output layer runs once per prompt, not once per prompt token.
    out = model(input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=ctx_pos, use_cache=n_in > 0,
                logits_to_keep=1)
    last_logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    if n_in == 0:  # single-token candidates: the prompt's pass already scored them all
        return [[CandidateScore(float(last_logprobs[row, c[0]]), 1) for c in cs] for row, (_, cs) in enumerate(batch)]

    cand_ids = torch.full((len(cands), n_in), pad_id, dtype=torch.long)
    cand_mask = torch.zeros((len(cands), n_in), dtype=torch.long)
    for i, cand in enumerate(cands):
        cand_ids[i, : len(cand) - 1] = torch.tensor(cand[:-1], dtype=torch.long)
        cand_mask[i, : len(cand) - 1] = 1
    owner = torch.tensor(owners, device=device)
    cand_ids, cand_mask = cand_ids.to(device), cand_mask.to(device)
    cache = out.past_key_values
    cache.reorder_cache(owner)  # one copy of the example's prompt cache per candidate
    ctx_len = ctx_mask.sum(-1)[owner]
    # padding gets position 0: beyond a short candidate, ctx_len + k may pass the model's last position
    cand_pos = (ctx_len[:, None] + torch.arange(n_in, device=device)[None, :]) * cand_mask
    logits = model(
        input_ids=cand_ids,
        attention_mask=torch.cat([ctx_mask[owner], cand_mask], dim=1),
        position_ids=cand_pos,
        past_key_values=cache,
        use_cache=False,
    ).logits
    cand_logprobs = torch.log_softmax(logits.float(), dim=-1)

    results: list[list[CandidateScore]] = [[] for _ in batch]
    for i, cand in enumerate(cands):
        first = last_logprobs[owners[i], cand[0]]
        rest = torch.zeros((), device=device)
        if len(cand) > 1:
            targets = torch.tensor(cand[1:], device=device)
            rest = cand_logprobs[i, torch.arange(len(cand) - 1, device=device), targets].sum()
        results[owners[i]].append(CandidateScore(float(first + rest), len(cand)))
    return results


PACKED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2", "xglm"})
"""Architectures scored by the packed pass (:func:`score_candidates`): they read a custom 4D attention mask and
per-token ``position_ids`` as given (tests check each against :func:`score_reference`); others use the KV-cache pass."""


def _packable(model: Any) -> bool:
    """Whether ``model`` can take the packed pass: a listed architecture, full attention in every layer, and an
    attention implementation that adds a 4D mask as it is (eager or SDPA)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PACKED_MODEL_TYPES:
        return False
    if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa"):
        return False
    return all(t == "full_attention" for t in (getattr(config, "layer_types", None) or ["full_attention"]))


def _packed_rows(batch: list[tuple[list[int], list[list[int]]]], pad_id: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Input ids, 4D additive mask and positions of packed rows (left-padded), and each row's packed length.

    A row is the context, then every candidate but its last token; a candidate's tokens see the context and the
    candidate's own earlier tokens, at the positions they would have right after the context."""
    rows, segs, poss = [], [], []
    for ctx, conts in batch:
        ids, seg, pos = list(ctx), [0] * len(ctx), list(range(len(ctx)))
        for j, cont in enumerate(conts):
            ids += cont[:-1]
            seg += [j + 1] * (len(cont) - 1)
            pos += range(len(ctx), len(ctx) + len(cont) - 1)
        rows.append(ids)
        segs.append(seg)
        poss.append(pos)
    width = max(len(r) for r in rows)
    ids_t = torch.full((len(rows), width), pad_id, dtype=torch.long)
    seg_t = torch.full((len(rows), width), -1, dtype=torch.long)
    pos_t = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (ids, seg, pos) in enumerate(zip(rows, segs, poss, strict=True)):
        ids_t[b, width - len(ids):] = torch.tensor(ids)
        seg_t[b, width - len(ids):] = torch.tensor(seg)
        pos_t[b, width - len(ids):] = torch.tensor(pos)
    at = torch.arange(width)
    query, key = seg_t[:, :, None], seg_t[:, None, :]
    allowed = (at[:, None] >= at[None, :])[None] & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # a padding position sees itself: no empty softmax row
    mask = torch.zeros((len(rows), 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return ids_t, mask, pos_t, [len(r) for r in rows]


@torch.no_grad()
def _score_contexts(model: Any, pad_id: int,
                    batch: list[tuple[list[int], list[list[int]]]]) -> list[list[CandidateScore]]:
    """Single-token candidates: the contexts right-padded and run under plain causal attention (padding only follows
    a context, so no mask is needed); the output layer runs on each context's last hidden state only."""
    device = _device(model)
    width = max(len(ctx) for ctx, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    for b, (ctx, _) in enumerate(batch):
        ids[b, : len(ctx)] = torch.tensor(ctx)
    hidden = model.base_model(input_ids=ids.to(device), use_cache=False).last_hidden_state
    ends = torch.tensor([len(ctx) - 1 for ctx, _ in batch], device=device)
    logits = model.get_output_embeddings()(hidden[torch.arange(len(batch), device=device), ends])
    last = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.tensor([b for b, (_, conts) in enumerate(batch) for _ in conts], device=device)
    picked = last[rows, torch.tensor([cont[0] for _, conts in batch for cont in conts], device=device)].tolist()
    out, k = [], 0
    for _, conts in batch:
        out.append([CandidateScore(picked[k + j], 1) for j in range(len(conts))])
        k += len(conts)
    return out


@torch.no_grad()
def _score_packed(model: Any, pad_id: int,
                  batch: list[tuple[list[int], list[list[int]]]]) -> list[list[CandidateScore]]:
    """Score several examples in one forward pass, one packed row each (:func:`_packed_rows`): no context is run
    twice and no candidate is padded to another's length. Logits are kept for the last positions only (each
    row's last context token and its candidates' tokens)."""
    device = _device(model)
    if all(len(cont) == 1 for _, conts in batch for cont in conts):
        return _score_contexts(model, pad_id, batch)
    ids, mask, pos, lengths = _packed_rows(batch, pad_id, next(model.parameters()).dtype)
    keep = max(n - len(ctx) for n, (ctx, _) in zip(lengths, batch, strict=True)) + 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   use_cache=False, logits_to_keep=keep).logits
    rows: list[int] = []
    at: list[int] = []
    owner: list[int] = []
    n_cands = 0
    for b, ((ctx, conts), n) in enumerate(zip(batch, lengths, strict=True)):
        last = keep - 1 - (n - len(ctx))  # the row's last context token, in the kept window
        start = last + 1
        for cont in conts:
            rows += [b] * len(cont)
            at += [last, *range(start, start + len(cont) - 1)]
            owner += [n_cands] * len(cont)
            start += len(cont) - 1
            n_cands += 1
    targets = torch.tensor([t for _, conts in batch for cont in conts for t in cont], device=device)
    picked = logits[torch.tensor(rows, device=device), torch.tensor(at, device=device)].float()
    logprobs = picked.gather(-1, targets[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
    sums = torch.zeros(n_cands, dtype=torch.float64, device=device)
    sums = sums.index_add_(0, torch.tensor(owner, device=device), logprobs.double()).tolist()
    out, k = [], 0
    for _, conts in batch:
        out.append([CandidateScore(sums[k + j], len(cont)) for j, cont in enumerate(conts)])
        k += len(conts)
    return out


MAX_BATCH_LOGITS = 2**28  # output-layer elements per candidate pass (1 GiB in fp32), whatever batch_size says
CPU_PASS_TOKENS = 40
"""What one forward pass costs on a CPU beyond its tokens, in token positions (reading every weight once: SmolLM2-135M,
float32, 2 threads, 57 ms = 44 tokens' worth; ``bench/scoring_throughput.py`` prints it for a model): the price
:func:`plan_batches` weighs padding against. On accelerators batches are not cut for padding (no figure measured)."""


def plan_batches(units: Sequence[tuple[Any, Any, list[int], list[list[int]]]], order: Sequence[int],
                 batch_size: int, vocab_size: int, max_logits: int = MAX_BATCH_LOGITS,
                 lengths: Sequence[int] | None = None, pass_tokens: float | None = None) -> list[list[int]]:
    """Split ``order`` (unit indices, longest row first) into consecutive batches of at most ``batch_size`` prompts
    whose candidate pass (candidates x longest candidate x vocabulary logits) stays within ``max_logits``; a prompt
    whose candidates alone exceed it gets a batch of its own. Without this bound, 8 BIG-bench prompts with 10
    candidates of ~300 tokens each ask a 152K-vocabulary model for ~15 GB of logits.

    Within these bounds: the fewest batches, or, given ``lengths`` (each unit's input row, in tokens) and
    ``pass_tokens`` (what one forward pass costs beyond its tokens, in token positions), the batches of least cost
    ``sum(pass_tokens + rows x longest row)`` -- a short prompt is padded to a long one's length only where that
    costs less than a pass of its own. An exact dynamic programme over the order (O(len(order) x batch_size))."""
    if pass_tokens is not None and pass_tokens < 0:
        raise ValueError(f"pass_tokens={pass_tokens!r}: a cost in token positions, accepted >= 0 or None")
    priced = lengths is not None and pass_tokens is not None
    n = len(order)
    best: list[float] = [0.0] + [float("inf")] * n  # best[i]: least cost of order[:i]
    start = [0] * (n + 1)  # start[i]: where the last batch of that plan begins
    for i in range(1, n + 1):
        n_cands = longest = width = 0
        for j in range(i - 1, max(i - batch_size, 0) - 1, -1):  # the last batch is order[j:i]
            conts = units[order[j]][3]
            n_cands += len(conts)
            longest = max(longest, max(len(c) for c in conts))
            if j < i - 1 and n_cands * longest * vocab_size > max_logits:
                break
            width = max(width, lengths[order[j]]) if priced else 0
            cost = best[j] + (pass_tokens + (i - j) * width if priced else 1)
            if cost < best[i]:
                best[i], start[i] = cost, j
    batches: list[list[int]] = []
    i = n
    while i > 0:
        batches.append(list(order[start[i]:i]))
        i = start[i]
    return batches[::-1]


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
    special_tokens: str = "tokenizer",
    max_length: int | None = None,
    method: Literal["auto", "packed", "kv"] = "auto",
    pass_tokens: float | None = None,
) -> list[list[CandidateScore]]:
    """Scores of every candidate of every (prompt, candidates) group, in the input order, read as :func:`reading`
    says (start tokens by ``special_tokens``; contexts cut to the model's positions or ``max_length`` if lower).

    ``method``: ``packed`` runs each example as one row (context, then every candidate but its last token, under an
    attention mask that lets each candidate see only the context and itself); ``kv`` runs the contexts, then the
    candidates on a copy of their KV cache; ``auto`` (default) packs the architectures in
    :data:`PACKED_MODEL_TYPES`. Both give :func:`score_reference`'s scores to float precision.

    ``batch_size`` counts examples; their candidates ride along, within a memory bound of ``max_logits``
    output-layer elements per batch (:func:`plan_batches`). Examples are sorted by length (longest first, so an
    out-of-memory error shows at once) and the results put back in order. ``pass_tokens``: a forward pass's cost in
    token positions, weighed against padding short examples to a batch's longest; ``None``: :data:`CPU_PASS_TOKENS`
    on a CPU, on an accelerator no cut (batches of ``batch_size``).
    """
    from tqdm.auto import tqdm

    if method not in ("auto", "packed", "kv"):
        raise ValueError(f"unknown scoring method {method!r}; accepted: 'auto', 'packed', 'kv'")
    packed = method == "packed" or (method == "auto" and _packable(model))
    read = reading(model, tokenizer, special_tokens, max_length)
    encoded: list[list[tuple[list[int], list[int], bool]]] = []
    for prompt, candidates in groups:
        if not candidates:
            raise ValueError(f"prompt {prompt[:60]!r} has no candidates")
        pairs = [encode_pair(tokenizer, prompt, c, read) for c in candidates]
        encoded.append([(*fit_pair(ctx, cont, read.max_length), cont) for ctx, cont in pairs])
    # The context tokens can differ between candidates when a candidate merges with the prompt's last token, or when
    # a truncated context keeps fewer tokens before a longer candidate; such a group is scored per distinct context
    # so every score stays exact.
    units: list[tuple[int, list[int], list[int], list[list[int]]]] = []  # (group, candidate indices, ctx, conts)
    for g, pairs in enumerate(encoded):
        by_ctx: dict[tuple[int, ...], list[int]] = {}
        for j, (ctx, _, _) in enumerate(pairs):
            by_ctx.setdefault(tuple(ctx), []).append(j)
        for ctx, idxs in by_ctx.items():
            units.append((g, idxs, list(ctx), [pairs[j][2] for j in idxs]))
    # longest first (packed: the whole row), so batches are of like lengths and an out-of-memory error shows at once
    row_lengths = [len(ctx) + packed * sum(len(c) - 1 for c in conts) for _, _, ctx, conts in units]
    order = sorted(range(len(units)), key=lambda u: -row_lengths[u])
    score_batch = _score_packed if packed else _score_batch
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[list[CandidateScore | None]] = [[None] * len(pairs) for pairs in encoded]
    bar = tqdm(total=len(units), desc="scoring", unit="prompt", disable=not progress)
    # a packed row keeps logits for its candidates' tokens and its last context token: planned as one such candidate
    plan = [(g, i, c, [[0] * (1 + n - len(c))]) for (g, i, c, _), n in zip(units, row_lengths, strict=True)] \
        if packed else units
    if pass_tokens is None and _device(model).type == "cpu":
        pass_tokens = CPU_PASS_TOKENS
    for planned in plan_batches(plan, order, batch_size, _vocab_size(model, tokenizer), max_logits, row_lengths,
                                pass_tokens):
        chunk = [units[u] for u in planned]
        scored = score_batch(model, pad_id, [(ctx, conts) for _, _, ctx, conts in chunk])
        for (g, idxs, _, _), scores in zip(chunk, scored, strict=True):
            for j, s in zip(idxs, scores, strict=True):
                results[g][j] = CandidateScore(s.sum_logprob, s.n_tokens, encoded[g][j][1])
        bar.update(len(chunk))
    bar.close()
    return [[s for s in row if s is not None] for row in results]


def tied(scores: Sequence[CandidateScore], rule: Literal["mean", "sum"] = "mean") -> list[int]:
    """Indices of the candidates sharing the best score under ``rule`` (one index when there is no tie)."""
    if rule not in ("mean", "sum"):
        raise ValueError(f"unknown scoring rule {rule!r}; accepted: 'mean', 'sum'")
    if not scores:
        raise ValueError("no candidate scores to choose from")
    values = [s.mean_logprob if rule == "mean" else s.sum_logprob for s in scores]
    best = max(values)
    return [i for i, v in enumerate(values) if v == best]


def tie_key(seed: int, task: str, example_id: str) -> str:
    """The key of an example's seeded tie break (:func:`predict`)."""
    return f"{seed}\0{task}\0{example_id}"


def predict(scores: Sequence[CandidateScore], rule: Literal["mean", "sum"] = "mean",
            tie_break: Literal["random", "first"] = "first", key: str = "") -> int:
    """Index of the chosen candidate: highest mean (the paper's rule) or sum of token log-probabilities.

    Among tied candidates, ``first`` keeps the first; ``random`` picks by a hash of ``key`` (:func:`tie_key`: seed,
    task and example id), so the same key always picks the same candidate and no position is favoured."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break {tie_break!r}; accepted: 'random', 'first'")
    best = tied(scores, rule)
    if tie_break == "first" or len(best) == 1:
        return best[0]
    digest = hashlib.sha256(key.encode()).digest()
    return best[int.from_bytes(digest[:8], "big") % len(best)]


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
    """Scores on disk (SQLite), keyed by (model fingerprint and reading, task, example id, candidate).

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
            "sum_logprob REAL, n_tokens INTEGER, truncated INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (model, task, example, candidate))"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(scores)")}
        if "truncated" not in columns:  # a cache written before truncation was recorded
            with self._db:
                self._db.execute("ALTER TABLE scores ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0")

    def get(self, model: str, task: str, example: str, candidate: str) -> CandidateScore | None:
        row = self._db.execute(
            "SELECT sum_logprob, n_tokens, truncated FROM scores "
            "WHERE model=? AND task=? AND example=? AND candidate=?",
            (model, task, example, candidate),
        ).fetchone()
        return CandidateScore(row[0], row[1], bool(row[2])) if row else None

    def put_many(self, rows: Sequence[tuple[str, str, str, str, CandidateScore]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores (model, task, example, candidate, sum_logprob, n_tokens, truncated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(m, t, e, c, s.sum_logprob, s.n_tokens, int(s.truncated)) for m, t, e, c, s in rows],
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
    special_tokens: str = "tokenizer",
    max_length: int | None = None,
) -> list[list[CandidateScore]]:
    """Scores of each example's candidates (:class:`brdlib.tasks.Example`: task, example_id, prompt, continuations).

    What is scored is ``prompt + continuation`` (the candidate behind the task's target delimiter), read as
    :func:`score_candidates` says. With a cache, only (example, continuation) pairs not scored before by these exact
    weights under this exact reading are run.
    """
    fingerprint = ""
    if cache is not None:
        read = reading(model, tokenizer, special_tokens, max_length)
        fingerprint = f"{model_fingerprint(model)}|{read.key}"
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
                                  batch_size=batch_size, special_tokens=special_tokens, max_length=max_length)
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


# Text probabilities (Table 5: brdlib.cross_entropy) ---------------------------------------------------------


class ScoringError(ValueError):
    """A reading that cannot be done (named, with what is accepted)."""


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
        raise ScoringError(f"unknown average {average!r}; accepted: 'arithmetic', 'geometric'")


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
