"""The analyses (brdlib.cross_entropy, probing, data_size; scoring's text probabilities): Table 5's cross-entropy,
per-token log-probabilities, probing, the data-size plan, and notebooks 07-09 on the tiny profile."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from brdlib import cross_entropy as xent
from brdlib import data_size, probing, scoring
from brdlib.config import ConfigError, load_config
from brdlib.cross_entropy import CrossEntropyError, cross_entropy
from brdlib.probing import ProbingError, probe_layer
from brdlib.scoring import ScoringError, TextProb, token_logprobs


@pytest.fixture(scope="module")
def tiny_model():
    from brdlib.models import load_model

    return load_model("tiny-random:0")


def test_cross_entropy_by_hand():
    # -(0.5 log 0.25 + 0.2 log 0.5) = 0.5 * 2 log 2 + 0.2 log 2 = 1.2 log 2
    assert cross_entropy([0.5, 0.2], [0.25, 0.5]) == pytest.approx(1.2 * math.log(2))
    assert cross_entropy([0.3], [1.0]) == 0.0
    with pytest.raises(CrossEntropyError, match="same texts"):
        cross_entropy([0.5], [0.5, 0.5])
    with pytest.raises(CrossEntropyError, match=r"\(0, 1\]"):
        cross_entropy([0.5], [0.0])


def test_text_prob_averages():
    lp = np.log([0.5, 0.125])
    p = TextProb.from_logprobs(lp)
    assert p.n_tokens == 2
    assert p.sequence_prob("arithmetic") == pytest.approx(0.3125)  # (0.5 + 0.125) / 2
    assert p.sequence_prob("geometric") == pytest.approx(0.25)  # sqrt(0.5 * 0.125)
    with pytest.raises(ScoringError, match="accepted"):
        p.sequence_prob("harmonic")


def test_cross_entropy_table_sums_texts_and_averages_bigbench():
    cfg = load_config("tiny")
    texts = pd.DataFrame({
        "task": ["rte", "rte", "bigbench:a", "bigbench:b"],
        "example_id": ["1", "2", "3", "4"], "text": 0,
        "p": [0.5, 0.2, 0.5, 0.5], "q_student_base": [0.25, 0.5, 0.5, 0.25], "q_brd": [0.5, 0.5, 0.5, 0.5],
    })
    tidy = xent.cross_entropy_table(cfg, texts).set_index(["role", "task"])
    assert tidy.loc[("student_base", "rte"), "value"] == pytest.approx(1.2 * math.log(2))
    assert tidy.loc[("student_base", "rte"), "n"] == 2
    # BIG-bench-Avg: the mean of the per-task sums, 0.5 log 2 and 0.5 * 2 log 2
    assert tidy.loc[("student_base", "bigbench_avg"), "value"] == pytest.approx(0.75 * math.log(2))
    delta = xent.cross_entropy_difference(cfg, texts).set_index("task")
    assert delta.loc["rte", "delta"] == pytest.approx(0.7 * math.log(2) - 1.2 * math.log(2))
    assert delta.loc["rte", "ci_low"] <= delta.loc["rte", "delta"] <= delta.loc["rte", "ci_high"]
    wide = xent.table5(cfg, tidy.reset_index())
    assert {"rte: ours (tiny)", "rte: n", "rte: per text", "rte: paper"} <= set(wide.columns)
    assert wide.set_index("role").loc["brd", "rte: paper"] == 66.2


def test_ce_pairs_readings():
    from brdlib.tasks import Example

    ex = Example("rte", "1", "Q? Answer:", ("Yes", "No"), 1, "test", "x", "t")
    assert xent.ce_pairs(ex, "instance") == [("", "Q? Answer: No")]
    assert xent.ce_pairs(ex, "candidates") == [("Q? Answer:", " Yes"), ("Q? Answer:", " No")]
    with pytest.raises(CrossEntropyError, match="accepted"):
        xent.ce_pairs(ex, "words")


def test_token_logprobs_match_score_reference(tiny_model):
    from brdlib.scoring import score_reference

    m = tiny_model
    pairs = [("", "Hello world, this is a test."), ("Question: is it?", " Yes"), ("The cat sat ", "on the mat"),
             ("", "a")]
    # a 1 MB logits budget forces one sequence per batch for the longest ones: batching must not change anything
    for budget in (1, 256):
        lps = token_logprobs(m.model, m.tokenizer, pairs, batch_size=3, logits_budget_mb=budget)
        for (ctx, cont), lp in zip(pairs, lps, strict=True):
            ref = score_reference(m.model, m.tokenizer, ctx, cont)
            assert len(lp) == ref.n_tokens
            assert float(lp.sum()) == pytest.approx(ref.sum_logprob, abs=1e-4)


def test_text_probs_cache_reuses(tiny_model, tmp_path):
    m = tiny_model
    pairs = [("", "one text"), ("", "another, longer text")]
    cache = scoring.TextProbCache(tmp_path / "c.sqlite")
    first = scoring.text_probs(m.model, m.tokenizer, pairs, cache)
    again = scoring.text_probs(m.model, m.tokenizer, pairs[::-1], cache)
    assert again[::-1] == first
    cache.close()


def test_mean_pooled_states_ignore_padding(tiny_model):
    m = tiny_model
    both = probing.mean_pooled_states(m.model, m.tokenizer, ["short", "a much longer text than the first one"], 2)
    alone = probing.mean_pooled_states(m.model, m.tokenizer, ["short"], 1)
    assert both.shape == (m.model.config.num_hidden_layers + 1, 2, m.model.config.hidden_size)
    np.testing.assert_allclose(both[:, 0], alone[:, 0], atol=1e-5)


def _split(rng, n, separable):
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 16))
    if separable:
        x[:, 0] += 6 * (2 * y - 1)
    return x, y


def test_probe_separable_and_noise():
    rng = np.random.default_rng(0)
    sep = probe_layer(_split(rng, 200, True), _split(rng, 100, True), _split(rng, 400, True), [0.01, 1.0])
    assert sep["test_accuracy"] >= 0.98
    assert sep["C"] in (0.01, 1.0)
    noise = probe_layer(_split(rng, 200, False), _split(rng, 100, False), _split(rng, 2000, False), [0.01, 1.0])
    assert abs(noise["test_accuracy"] - 0.5) < 0.06
    one = probe_layer((np.zeros((3, 2)), np.array([1, 1, 1])), (np.zeros((2, 2)), np.array([1, 0])),
                      (np.zeros((4, 2)), np.array([1, 1, 1, 0])), [1.0])
    assert one["test_accuracy"] == 0.75 and math.isnan(one["C"])


def test_config_keys_validated():
    cfg = load_config("tiny", ["analysis.data_size_fractions=[1.0, 0.5]", "analysis.probing_c_grid=[1, 0.1]"])
    assert data_size.data_size_fractions(cfg) == [0.5, 1.0]
    assert cfg.analysis.probing_c_grid == [0.1, 1.0]
    with pytest.raises(ConfigError, match="data_size_fractions"):
        load_config("tiny", ["analysis.data_size_fractions=[0, 0.5]"])
    with pytest.raises(ConfigError, match="cross_entropy_text"):
        load_config("tiny", ["analysis.cross_entropy_text=words"])
    for profile in ("smoke", "paper"):
        load_config(profile)


def test_probing_tasks_are_table9_only():
    cfg = load_config("tiny")
    assert probing.probing_tasks(cfg) == ["xnli", "rte", "cb", "pawsx", "boolq", "sst2"]
    assert probing.probing_tasks(load_config("tiny", ["analysis.probing_tasks=[cb]"])) == ["cb"]
    with pytest.raises(ProbingError, match="cannot be probed"):
        probing.probing_tasks(load_config("tiny", ["analysis.probing_tasks=[bigbench]"]))
    with pytest.raises(ProbingError, match="no Table 9 task"):
        probing.probing_tasks(load_config("tiny", ["data.tasks=[bigbench]"]))


def test_data_size_curve_helpers():
    plan = pd.DataFrame({"fraction": [0.5, 1.0], "variant": ["brd_frac0.5", "brd"], "student": ["brd_frac0.5", "brd"],
                         "steps": [2, 4], "passages": [5, 10], "sentences": [15, 30], "rows": [15, 30],
                         "tokens": [500, 1000]})
    tasks = ["xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench_avg"]
    acc = pd.DataFrame([{"role": r, "task": t, "value": v, "n": 10, "n_tasks": 1, "ci_low": v - 5, "ci_high": v + 5}
                        for r, v in [("student_base", 50.0), ("brd_frac0.5", 55.0), ("brd", 60.0)] for t in tasks])
    curve = data_size.data_size_frame(plan, acc)
    avg = curve[curve["task"] == "average"].set_index("fraction")["value"]
    assert list(avg) == [50.0, 55.0, 60.0]
    wide = data_size.data_size_table(curve, "tiny")
    assert list(wide["passages"]) == [0, 5, 10] and "average: ours (tiny)" in wide.columns
    claims = data_size.data_size_claims(curve)
    assert claims.iloc[1]["ours"] == pytest.approx(10.0)
    assert claims.iloc[2]["ours"] == "2 of 2"
    data_size.data_size_figure(curve)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["07_cross_entropy", "08_probing", "09_data_size"])
def test_notebook_writes_its_table_and_figure_on_tiny(notebook, tiny_study):
    tiny_study.executed(notebook)
    figures = tiny_study.figures
    expected = {"07_cross_entropy": ["07_table5.csv", "07_cross_entropy.png"],
                "08_probing": ["08_probing.csv", "08_figure4.png"],
                "09_data_size": ["09_data_size.csv", "09_figure2.png"]}[notebook]
    for name in expected:
        assert (figures / name).is_file(), name


# The reading of analysed text (issue 15): the tokenizer's start token and the model's positions ------------------


def _tiny_gpt2(n_positions: int = 32):
    """A random 2-layer GPT-2 with ``n_positions`` learned positions, over the tiny tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from brdlib.models import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tok


LONG = "The cat sat on the mat and the dog slept by the door. " * 8


def test_token_logprobs_and_states_fit_the_models_positions():
    """A text longer than GPT-2's positions crashed Table 5 and the probes. A (context, text) pair is read as the
    scorer reads it (context cut from the left); a text longer than the positions is read in lm-eval's rolling
    windows (``loglikelihood_rolling``); probing keeps the last positions' tokens."""
    import torch

    from brdlib.scoring import score_reference

    model, tok = _tiny_gpt2(32)
    ids = tok(LONG)["input_ids"]
    assert len(ids) > 3 * 32
    ctx_lp, whole_lp = token_logprobs(model, tok, [(LONG, " and then"), ("", LONG)], batch_size=2)
    assert float(ctx_lp.sum()) == pytest.approx(score_reference(model, tok, LONG, " and then").sum_logprob, abs=1e-4)
    assert len(whole_lp) == len(ids)  # every token scored
    eot = tok.eos_token_id
    with torch.no_grad():  # lm-eval's rolling windows by hand: 32 predicted tokens each, one token of context
        first = model(input_ids=torch.tensor([[eot, *ids[:31]]])).logits[0].log_softmax(-1)
        second = model(input_ids=torch.tensor([ids[31:63]])).logits[0].log_softmax(-1)
    np.testing.assert_allclose(whole_lp[:32], first[torch.arange(32), torch.tensor(ids[:32])].numpy(), atol=1e-4)
    np.testing.assert_allclose(whole_lp[32:64], second[torch.arange(32), torch.tensor(ids[32:64])].numpy(),
                               atol=1e-4)
    states = probing.mean_pooled_states(model, tok, [LONG, "short"], 2)
    with torch.no_grad():
        tail = model(input_ids=torch.tensor([ids[-32:]]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(states[:, 0], torch.stack([h[0].mean(0) for h in tail]).numpy(), atol=1e-4)


def test_probing_and_table5_read_the_tokenizers_start_token():
    """XGLM's tokenizer puts '</s>' before every text; the probes and Table 5 see it, as training does."""
    import torch
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from brdlib.models import tiny_tokenizer

    backend = Tokenizer.from_str(tiny_tokenizer().backend_tokenizer.to_str())
    backend.add_special_tokens(["</s>"])
    eos = backend.token_to_id("</s>")
    backend.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", eos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>")
    model, _ = _tiny_gpt2(64)
    model.resize_token_embeddings(len(tok))
    text = "The cat sat on the mat."
    ids = tok(text)["input_ids"]
    assert ids[0] == eos
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    states = probing.mean_pooled_states(model, tok, [text], 1)
    np.testing.assert_allclose(states[:, 0], torch.stack([h[0].mean(0) for h in out.hidden_states]).numpy(),
                               atol=1e-5)
    lp = token_logprobs(model, tok, [("", text)])[0]
    expected = out.logits[0, :-1].log_softmax(-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    np.testing.assert_allclose(lp, expected.numpy(), atol=1e-5)
