"""The paper profile's sizes: Table 6's second teacher annotates §5.3's one million sentences, not the whole
five-million-sentence corpus, and the probes' inputs (A.5) are bounded so their hidden states fit in memory."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import XGLMConfig

from brdlib import blind, probing
from brdlib.config import load_config
from brdlib.probing import ProbingError

XNLI_TRAIN, XNLI_VALIDATION, XNLI_TEST = 392_702, 2_490, 5_010


# Table 6 (§5.3) ------------------------------------------------------------------------------------------------------


def test_paper_second_teacher_annotates_one_million_sentences(monkeypatch):
    cfg = load_config("paper")
    assert cfg.protocols.second_teacher_sentences == 1_000_000  # §5.3: "one million sentences"
    per_passage = cfg.data.sentences_per_passage

    def corpus(cfg, progress=True):  # the paper corpus' shape: 5M sentences in passages of 5, read lazily
        n = cfg.data.n_sentences // per_passage
        return (SimpleNamespace(passage_id=f"p{i}", sentences=("s",) * per_passage) for i in range(n))

    annotated: dict[str, int] = {}

    def behaviours(cfg, passages, role="teacher", generate_missing=True):
        annotated[role] = sum(len(p.sentences) for p in passages)
        return []

    monkeypatch.setattr(blind, "load_passages", corpus)  # the names blind calls them by
    monkeypatch.setattr(blind, "teacher_behaviours", behaviours)
    monkeypatch.setattr(blind, "assemble_variant", lambda *a, **k: None)
    monkeypatch.setattr(blind, "train_student", lambda *a, **k: None)
    students = blind.train_two_teacher_students(cfg, progress=False)
    assert students == {"teacher": "brd_subset_teacher", "second_teacher": "brd_subset_second_teacher"}
    assert annotated == {"teacher": 1_000_000, "second_teacher": 1_000_000}  # not the corpus' 5,000,000
    assert cfg.data.n_sentences == 5_000_000


# Figure 4's probes (A.5) ---------------------------------------------------------------------------------------------


def test_paper_probing_inputs_are_bounded_to_a_few_gigabytes():
    a = load_config("paper").analysis
    assert a.probing_max_train is not None and a.probing_max_eval is not None
    xglm = XGLMConfig()  # XGLM-564M's shape: 24 layers + the embedding output, width 1,024
    assert (xglm.num_layers, xglm.d_model) == (24, 1024)
    assert probing.probe_feature_bytes(1, 25, 1024) == 102_400
    assert probing.probe_feature_bytes(XNLI_TRAIN, 25, 1024) > 40e9  # unbounded XNLI: ~40 GB per model
    per_task = {"train": a.probing_max_train, "tune": a.probing_max_eval, "test": a.probing_max_eval}
    need = probing.check_probe_memory(load_config("paper"), "xnli", per_task, xglm)
    assert need <= a.probing_max_feature_gb * 1e9 <= 8e9  # a few GB at most, per model and task
    assert a.probing_max_eval >= XNLI_TEST  # every evaluation split stays whole


def test_an_unbounded_probe_set_is_refused_by_name():
    cfg = load_config("paper", ["analysis.probing_max_train=null", "analysis.probing_max_eval=null"])
    sizes = {"train": XNLI_TRAIN, "tune": XNLI_VALIDATION, "test": XNLI_TEST}
    with pytest.raises(ProbingError, match=r"probing xnli: train 392,702.*= 41\.0 GB.*probing_max_feature_gb"
                                                     r"=4\.0.*analysis\.probing_max_train"):
        probing.check_probe_memory(cfg, "xnli", sizes, XGLMConfig())
    unlimited = load_config("paper", ["analysis.probing_max_feature_gb=null"])
    assert probing.check_probe_memory(unlimited, "xnli", sizes, XGLMConfig()) > 40e9


def test_probing_data_honours_the_bounds_and_probe_models_checks_before_encoding(tmp_path, monkeypatch):
    cfg = load_config("tiny", [f"output_root={tmp_path}", "analysis.probing_max_train=2",
                               "analysis.probing_max_eval=1"])
    data = probing.probing_data(cfg, ["rte", "sst2"])
    for splits in data.values():
        assert len(splits["train"]) == 2 and len(splits["tune"]) == 1 and len(splits["test"]) == 1
    tight = load_config("tiny", [f"output_root={tmp_path}", "analysis.probing_max_feature_gb=1e-9"])
    monkeypatch.setattr(probing, "mean_pooled_states", lambda *a, **k: pytest.fail("encoded before the check"))
    with pytest.raises(ProbingError, match="probing rte: train .* over analysis.probing_max_feature_gb"):
        probing.probe_models(tight, {"student_base": "student"}, ["rte"], progress=False)
