"""brdlib.assemble: exact passage strings (§3.2), every variant's filter, saving, cards and reuse."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from brdlib import records
from brdlib.assemble import (
    VARIANTS,
    AssembleError,
    assemble_all,
    assemble_variant,
    build_rows,
    cards_table,
    choose_passages,
    encode_passages,
    index_behaviours,
    is_sentiment_qra,
    load_variant,
    passage_examples,
    resolve_sep,
    size_variant_names,
    variant_spec,
)
from brdlib.config import load_config
from brdlib.models import tiny_tokenizer
from brdlib.store import StoreError, load_card, passages_dir

SEP = " <sep> "


# Fixtures: brdlib.records' own types, with the source and drop reason defaulted ---------------------------------


def Passage(passage_id: str, doc_id: str, sentences: tuple[str, ...],  # noqa: N802
            source: str = "fixture") -> records.Passage:
    return records.Passage(passage_id, doc_id, sentences, source)


def BehaviourRecord(key: str, behaviour: str, passage_id: str, sentence_index: int, sentence: str,  # noqa: N802
                    response: str, drop_reason: str | None = None) -> records.BehaviourRecord:
    return records.BehaviourRecord(key, behaviour, passage_id, sentence_index, sentence, response, drop_reason)


def rec(p: records.Passage, i: int, behaviour: str, response: str,
        drop_reason: str | None = None) -> records.BehaviourRecord:
    return BehaviourRecord(f"{p.passage_id}/{i}/{behaviour}", behaviour, p.passage_id, i, p.sentences[i],
                           "" if drop_reason else response, drop_reason)


TOY = Passage("c4-000001-000", "doc1", (
    "Paris is the capital of France.",
    "It hosted the Olympics in 2024.",
    "The city welcomed 15 million visitors.",
))
TOY_NER = ['In this sentence, "Paris" is a geopolitical entity, and "France" is a geopolitical entity.',
           'In this sentence, "Olympics" is an event name entity, and "2024" is a date entity.',
           'In this sentence, "15 million" is a numerical entity.']
TOY_QRA = ["Question: What is the capital of France? Answer: Paris.",
           "Question: When did it host the Olympics? Answer: In 2024.",
           "Question: How many visitors did the city welcome? Answer: 15 million."]


def toy_behaviours(p: Passage = TOY) -> list[BehaviourRecord]:
    return [rec(p, i, "ner", TOY_NER[i]) for i in range(3)] + [rec(p, i, "qra", TOY_QRA[i]) for i in range(3)]


def rows_by_kind(rows):
    return {r["kind"]: r["text"] for r in rows}


def corpus(n: int = 20) -> tuple[list[Passage], list[BehaviourRecord]]:
    """n 3-sentence passages, fully annotated except: passage 1's NER of sentence 0 dropped, passage 2 has no QRA,
    passage 3 has an attitude question, passage 4 a polarity answer."""
    passages = [Passage(f"p{k:03d}", f"d{k // 2}", tuple(f"Sentence {j} of passage {k}." for j in range(3)))
                for k in range(n)]
    recs = []
    for k, p in enumerate(passages):
        for i in range(3):
            recs.append(rec(p, i, "ner", f"NER {k}.{i}", drop_reason="no entity" if (k, i) == (1, 0) else None))
            if k == 2:
                continue
            qra = f"Question: What is sentence {i}? Answer: Part {k}.{i}."
            if (k, i) == (3, 1):
                qra = "Question: What is the attitude of the writer? Answer: Hopeful."
            if (k, i) == (4, 2):
                qra = "Question: How does the review feel? Answer: It is negative."
            recs.append(rec(p, i, "qra", qra))
    return passages, recs


def tiny_cfg(tmp_path, *overrides):
    return load_config("tiny", [f"output_root={tmp_path}", *overrides])


# Exact strings (§3.2) -------------------------------------------------------------------------------------


def test_exact_passage_strings_for_a_three_sentence_document():
    index = index_behaviours(toy_behaviours(), [TOY])
    rows, counts = build_rows([TOY], index, VARIANTS["brd"], SEP, seed=0)
    s1, s2, s3 = TOY.sentences
    n1, n2, n3 = TOY_NER
    q1, q2, q3 = TOY_QRA
    assert rows_by_kind(rows) == {
        "ori": f"{s1} <sep> {s2} <sep> {s3}",
        "ner": f"{s1} <sep> {n1} <sep> {s2} <sep> {n2} <sep> {s3} <sep> {n3}",
        "qra": f"{s1} <sep> {q1} <sep> {s2} <sep> {q2} <sep> {s3} <sep> {q3}",
    }
    assert len(rows) == 3 and counts.source_passages == 1 and counts.sentences == 3
    assert counts.annotations_used == Counter({"ner": 3, "qra": 3})
    assert {r["passage_id"] for r in rows} == {TOY.passage_id} and {r["sentence_index"] for r in rows} == {-1}


def test_sep_is_a_parameter_and_eos_uses_the_tokenizer():
    index = index_behaviours(toy_behaviours(), [TOY])
    rows, _ = build_rows([TOY], index, VARIANTS["ori"], "\n", seed=0)
    assert rows[0]["text"] == "\n".join(TOY.sentences)
    tok = tiny_tokenizer()
    assert resolve_sep("eos", tok) == tok.eos_token == "<|endoftext|>"
    assert resolve_sep(" | ", tok) == " | "
    with pytest.raises(AssembleError, match="needs the student tokenizer"):
        resolve_sep("eos", None)
    with pytest.raises(ValueError, match="passages.sep"):
        load_config("tiny", ["passages.sep="])


def test_a_dropped_annotation_leaves_its_sentence_in_place():
    recs = toy_behaviours()
    recs[1] = rec(TOY, 1, "ner", "", drop_reason="no entity found")  # NER of s2 dropped
    recs = [r for r in recs if not (r.behaviour == "qra" and r.sentence_index == 2)]  # QRA of s3 missing
    index = index_behaviours(recs, [TOY])
    rows, counts = build_rows([TOY], index, VARIANTS["brd"], SEP, seed=0)
    s1, s2, s3 = TOY.sentences
    text = rows_by_kind(rows)
    assert text["ner"] == f"{s1} <sep> {TOY_NER[0]} <sep> {s2} <sep> {s3} <sep> {TOY_NER[2]}"
    assert text["qra"] == f"{s1} <sep> {TOY_QRA[0]} <sep> {s2} <sep> {TOY_QRA[1]} <sep> {s3}"
    assert counts.annotations_absent == Counter({"ner": 1, "qra": 1})
    assert index.dropped == Counter({("ner", "no entity found"): 1})


def test_an_annotated_passage_without_any_annotation_is_skipped_and_counted():
    recs = [r for r in toy_behaviours() if r.behaviour == "ner"]
    rows, counts = build_rows([TOY], index_behaviours(recs, [TOY]), VARIANTS["brd"], SEP, seed=0)
    assert sorted(r["kind"] for r in rows) == ["ner", "ori"]
    assert counts.units_skipped_no_annotation == Counter({"qra": 1})


def test_behaviours_that_do_not_match_the_passages_fail_with_the_record_key():
    bad_sentence = BehaviourRecord("k1", "ner", TOY.passage_id, 0, "Another sentence.", "x", None)
    with pytest.raises(AssembleError, match="k1.*stale"):
        index_behaviours([bad_sentence], [TOY])
    bad_kind = BehaviourRecord("k2", "summary", TOY.passage_id, 0, TOY.sentences[0], "x", None)
    with pytest.raises(AssembleError, match="k2.*'summary'.*ner, qra"):
        index_behaviours([bad_kind], [TOY])
    bad_index = BehaviourRecord("k3", "qra", TOY.passage_id, 7, TOY.sentences[0], "x", None)
    with pytest.raises(AssembleError, match="k3.*sentence_index 7"):
        index_behaviours([bad_index], [TOY])
    orphan = BehaviourRecord("k4", "qra", "elsewhere", 0, "s", "x", None)
    assert index_behaviours([orphan], [TOY]).dropped == Counter({("qra", "passage not in corpus"): 1})


# Variants -----------------------------------------------------------------------------------------------


def build(variant: str, n: int = 20, seed: int = 0):
    passages, recs = corpus(n)
    return build_rows(passages, index_behaviours(recs, passages), variant_spec(variant), SEP, seed)


def test_brd_is_the_shuffled_mix_of_the_three_types():
    rows, _ = build("brd")
    kinds = [r["kind"] for r in rows]
    assert Counter(kinds) == {"ori": 20, "ner": 20, "qra": 19}  # passage 2 has no QRA at all
    assert kinds != sorted(kinds) and kinds[:20] != ["ori"] * 20  # mixed, not grouped by type
    again, _ = build("brd")
    assert [r["text"] for r in again] == [r["text"] for r in rows]  # seeded
    other, _ = build("brd", seed=1)
    assert [r["text"] for r in other] != [r["text"] for r in rows]


@pytest.mark.parametrize("variant, kinds", [
    ("ori", {"ori"}), ("ner", {"ner"}), ("qra", {"qra"}), ("no_ner", {"ori", "qra"}), ("no_qra", {"ori", "ner"}),
])
def test_type_filters(variant, kinds):
    rows, _ = build(variant)
    assert {r["kind"] for r in rows} == kinds
    full, _ = build("brd")
    assert sorted(r["text"] for r in rows) == sorted(r["text"] for r in full if r["kind"] in kinds)


def test_no_sent_drops_exactly_the_sentiment_qra_items():
    rows, counts = build("no_sent")
    full, _ = build("brd")
    assert counts.annotations_filtered_sentiment == 2
    qra = " ".join(r["text"] for r in rows if r["kind"] == "qra")
    assert "attitude" not in qra and "negative" not in qra and "Part 5.1" in qra
    assert "Sentence 1 of passage 3." in qra  # the sentence stays, its annotation goes

    def texts(rs, kind, keep):
        return sorted(r["text"] for r in rs if (r["kind"] == kind) == keep)

    assert texts(rows, "qra", False) == texts(full, "qra", False)  # D_ORI and D_NER untouched
    changed = {r["passage_id"] for r in full if r["kind"] == "qra" and r["text"] not in texts(rows, "qra", True)}
    assert changed == {"p003", "p004"}


@pytest.mark.parametrize("response, expected", [
    ("Question: What is the attitude of the author? Answer: He likes it.", True),
    ("Question: What sentiment does it express? Answer: Joy.", True),
    ("Question: How is the review? Answer: The review is Negative.", True),
    ("Question: How did critics respond? Answer: Positively.", True),
    ("Question: Which stance? Answer: A neutral one.", True),
    ("Question: What did he need to do? Answer: Maintain a high GPA.", False),
    ("Question: Is the test result negative? Answer: Yes.", False),  # polarity word in the question only
    ("Question: What is the structure of the sentence? Answer: A compound sentence.", False),
    # the teacher stage's layout: each label on its own line (brdlib.prompts)
    ("Question:\nWhat is the writer's attitude towards the plan?\nAnswer:\nHopeful.", True),
    ("Question:\nHow was the film received?\nAnswer:\nMostly negative reviews.", True),
    ("Question:\nHow much does Belmont Estate cost?\nAnswer:\nBelmont Estate costs $63 million.", False),
])
def test_sentiment_filter_on_fixtures(response, expected):
    assert is_sentiment_qra(response) is expected


def test_sentence_level_units_have_no_passage_order():
    rows, counts = build("sentence_level")
    assert {r["n_sentences"] for r in rows} == {1} and all(r["sentence_index"] >= 0 for r in rows)
    ori = [r for r in rows if r["kind"] == "ori"]
    expected = sorted(f"Sentence {j} of passage {k}." for k in range(20) for j in range(3))
    assert sorted(r["text"] for r in ori) == expected
    ner = {(r["passage_id"], r["sentence_index"]): r["text"] for r in rows if r["kind"] == "ner"}
    assert ner[("p005", 2)] == "Sentence 2 of passage 5. <sep> NER 5.2" and ("p001", 0) not in ner
    assert counts.units_skipped_no_annotation == Counter({"ner": 1, "qra": 3})
    # consecutive units rarely come from the same passage in order
    in_order = sum(a["passage_id"] == b["passage_id"] and b["sentence_index"] == a["sentence_index"] + 1
                   for a, b in zip(rows, rows[1:], strict=False))
    assert in_order < 5


def test_size_subsets_are_nested_and_sized():
    passages, recs = corpus(40)
    picked = {f: {p.passage_id for p in choose_passages(passages, f, seed=0)} for f in (0.1, 0.25, 0.5, 1.0)}
    assert [len(picked[f]) for f in (0.1, 0.25, 0.5, 1.0)] == [4, 10, 20, 40]
    assert picked[0.1] < picked[0.25] < picked[0.5] < picked[1.0]
    rows, counts = build_rows(passages, index_behaviours(recs, passages), variant_spec("brd_frac0.25"), SEP, 0)
    assert counts.source_passages == 10 and {r["passage_id"] for r in rows} == picked[0.25]
    assert len(choose_passages(passages[:3], 0.01, seed=0)) == 1  # never empty


def test_variant_names():
    assert variant_spec("brd_frac0.5").fraction == 0.5
    assert variant_spec("brd_frac1").name == "brd"
    with pytest.raises(AssembleError, match="unknown passage variant 'brd_frac2'.*no_sent.*brd_frac<f>"):
        variant_spec("brd_frac2")
    with pytest.raises(AssembleError, match="unknown passage variant 'NER'"):
        variant_spec("NER")
    cfg = load_config("tiny", ["passages.size_fractions=[0.5, 0.25, 1.0]"])
    assert size_variant_names(cfg) == ["brd_frac0.25", "brd_frac0.5", "brd"]
    with pytest.raises(ValueError, match="size_fractions must lie in"):
        load_config("tiny", ["passages.size_fractions=[0, 0.5]"])


def test_encode_passages_closes_each_with_eos():
    tok = tiny_tokenizer()
    ids = encode_passages(tok, ["Paris is the capital.", "Yes"])
    assert all(seq[-1] == tok.eos_token_id for seq in ids)
    assert tok.decode(ids[0][:-1]) == "Paris is the capital."


# Saving, cards, reuse -----------------------------------------------------------------------------------


def test_assemble_variant_saves_a_dataset_and_a_card_and_reuses_it(tmp_path):
    cfg = tiny_cfg(tmp_path)
    passages, recs = corpus(12)
    path = assemble_variant(cfg, "brd", passages=passages, behaviours=recs)
    assert path == passages_dir(cfg, "brd") == tmp_path / "data" / "tiny" / "passages" / "brd"
    ds = load_variant(cfg, "brd")
    card = load_card(cfg, "brd")
    assert len(ds) == card["rows"] == 12 + 12 + 11
    assert card["rows_by_kind"] == {"ori": 12, "ner": 12, "qra": 11} and card["source_passages"] == 12
    assert card["tokens"]["tokens"] == sum(ds["n_tokens"]) and card["tokens"]["max"] == max(ds["n_tokens"])
    assert abs(sum(card["token_share_by_kind"].values()) - 1) < 1e-3
    assert card["teacher_dropped"] == {"ner: no entity": 1} and card["sep"] == SEP
    tok = tiny_tokenizer()
    assert ds["n_tokens"] == [len(x) for x in encode_passages(tok, ds["text"])]

    stamp = (path / "card.json").stat().st_mtime_ns
    assemble_variant(cfg, "brd", passages=passages, behaviours=recs)
    assert (path / "card.json").stat().st_mtime_ns == stamp  # reused
    recs[0] = rec(passages[0], 0, "ner", "A changed response.")
    assemble_variant(cfg, "brd", passages=passages, behaviours=recs)
    assert (path / "card.json").stat().st_mtime_ns != stamp  # stale: rebuilt
    assert "A changed response." in " ".join(load_variant(cfg, "brd")["text"])
    assert not list(path.parent.glob(".*"))  # no temporary folders left


def test_assemble_all_and_tables(tmp_path):
    cfg = tiny_cfg(tmp_path, "passages.sep=eos", "passages.size_fractions=[0.5, 1.0]")
    passages, recs = corpus(12)
    cards = assemble_all(cfg, passages=passages, behaviours=recs)
    names = [c["variant"] for c in cards]
    assert names == [*VARIANTS, "brd_frac0.5"]
    table = cards_table(cards)
    assert list(table["variant"]) == names
    assert table.set_index("variant").loc["no_sent", "sentiment QRA dropped"] == 2
    assert table.set_index("variant").loc["brd_frac0.5", "source passages"] == 6
    assert load_card(cfg, "brd")["sep"] == "<|endoftext|>"
    ex = passage_examples(passages, recs, SEP)
    assert list(ex["passage type"]) == ["D_ORI", "D_NER", "D_QRA"]
    assert ex["ours"][0] == "Sentence 0 of passage 0. <sep> Sentence 1 of passage 0. <sep> Sentence 2 of passage 0."
    assert "NER 0.0" in ex["ours"][1]


def test_missing_variant_error_names_the_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="'brd' is not assembled.*notebook 02"):
        load_card(tiny_cfg(tmp_path), "brd")
    with pytest.raises(StoreError, match="plain directory name"):
        passages_dir(tiny_cfg(tmp_path), "../x")


def test_card_is_json(tmp_path):
    cfg = tiny_cfg(tmp_path)
    passages, recs = corpus(4)
    path = assemble_variant(cfg, "sentence_level", passages=passages, behaviours=recs)
    card = json.loads((path / "card.json").read_text())
    assert card["unit"] == "sentence" and card["rows"] == len(load_variant(cfg, "sentence_level"))
