"""brdlib.corpus: readers of every source, the splitter, filtering, dedup, passages, determinism, caching."""

from __future__ import annotations

import gzip
import json
import lzma
import zipfile
from pathlib import Path

import pytest

from brdlib import corpus
from brdlib.config import load_config
from brdlib.corpus import (
    CorpusError,
    CorpusStats,
    build_passages,
    corpus_label,
    iter_cc100_format,
    load_corpus_stats,
    load_passages,
    split_sentences,
    strip_brown_tags,
    undo_wikitext_spacing,
)
from brdlib.records import Document

MIRROR = load_config("smoke").data.resolved_mirror_dir()
needs_mirror = pytest.mark.skipif(
    MIRROR is None or not (MIRROR / "corpus_web").is_dir(),
    reason="offline data mirror not found (set BRD_DATA_DIR or place it at ../shared/data)",
)

CC100_TEXT = """The first document opens here. It has two sentences in its first paragraph.
Its second paragraph is one line. Dr. Smith wrote it at 5 p.m. on Jan. 5 with great care.

A second document starts after the blank line. It repeats nothing at all.
Click here.
Short lines such as the one above are dropped. The run of sentences breaks there.


The third document follows two blank lines. It has a duplicate sentence in it.
It repeats nothing at all.
And it closes with one more sentence of ordinary length.
"""


def _cfg(tmp_path: Path, *overrides: str):
    return load_config("tiny", [f"output_root={tmp_path / 'out'}", *overrides])


def _text_file(tmp_path: Path, text: str = CC100_TEXT, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    elif name.endswith(".xz"):
        path.write_bytes(lzma.compress(text.encode()))
    else:
        path.write_text(text)
    return path


# The splitter ------------------------------------------------------------------------------------------------


def test_splitter_handles_abbreviations_decimals_and_quotes():
    assert split_sentences(corpus.TRICKY_CASES[0]) == ["Dr. Smith arrived at 5 p.m. on Jan. 5.", "He left soon after."]
    assert split_sentences(corpus.TRICKY_CASES[1]) == [
        "The price rose 3.5% to $12.75 in the U.S. last year.",
        "Analysts were surprised.",
    ]
    assert split_sentences(corpus.TRICKY_CASES[2]) == ['"Is it over?" she asked.', '"Yes," he said.', '"It is."']
    assert split_sentences(corpus.TRICKY_CASES[3]) == ['He said, "I\'ll be there at 10.30 a.m."', "Then he left."]
    assert split_sentences("   ") == []


def test_splitter_demo_lists_every_tricky_case():
    demo = corpus.splitter_demo()
    assert len(demo) == len(corpus.TRICKY_CASES) and demo.iloc[0, 1].count("‖") == 1


# Readers ------------------------------------------------------------------------------------------------------


def test_cc100_format_blank_lines_separate_documents_and_lines_are_paragraphs():
    docs = list(iter_cc100_format(CC100_TEXT.splitlines(), "t"))
    assert [len(d.paragraphs) for d in docs] == [2, 3, 3]
    assert [d.doc_id for d in docs] == ["t:000000", "t:000001", "t:000002"]
    assert docs[1].paragraphs[1] == "Click here."


def test_wikitext_spacing_is_undone():
    line = 'The lobster grows to 0 @.@ 7 kg ( 24 in ) , is " lobster red " and well @-@ known ; it isn \'t blue .'
    expected = 'The lobster grows to 0.7 kg (24 in), is "lobster red" and well-known; it isn\'t blue.'
    assert undo_wikitext_spacing(line) == expected


def test_wikitext_reader_skips_headings_and_unk_heavy_lines(tmp_path):
    folder = tmp_path / "corpus_web" / "wikitext-2"
    folder.mkdir(parents=True)
    (folder / "valid.txt").write_text(
        " \n = First Article = \n \n The first article has a normal sentence . It has 1 @,@ 000 words .\n"
        " \n = = Section = = \n \n <unk> <unk> <unk> line with many <unk> tokens .\n"
        " = Second Article = \n The second article is short but complete .\n"
    )
    (folder / "test.txt").write_text(" = Third = \n One more article from the test file is here .\n")
    stats = CorpusStats("wikitext2", "x")
    docs = list(corpus.iter_wikitext(folder, stats))
    assert [d.paragraphs for d in docs] == [
        ("The first article has a normal sentence. It has 1,000 words.",),
        ("The second article is short but complete.",),
        ("One more article from the test file is here.",),
    ]
    assert stats.source_skipped == {"heading line": 4, "<unk>-heavy line": 1}


def test_brown_tags_are_stripped():
    line = "\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ./."
    assert strip_brown_tags(line, "here") == 'The jury said "no evidence" was found.'
    with pytest.raises(CorpusError, match=r"corpus brown: here: token 'jury' is not word/TAG"):
        strip_brown_tags("The/at jury", "here")


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_brown_and_plaintext_zips_read_as_documents(tmp_path):
    brown = _zip(tmp_path / "brown.zip", {
        "brown/README": b"not a document",
        "brown/ca01": b"\n\n\tThe/at cat/nn sat/vbd ./.\n\n\n\tIt/pps slept/vbd ./.\n",
        "brown/cb02": b"\n\n\tA/at dog/nn ran/vbd ./.\n",
    })
    docs = list(corpus.iter_brown(brown, CorpusStats("brown", "x")))
    assert [(d.doc_id, d.paragraphs) for d in docs] == [
        ("brown:ca01", ("The cat sat.", "It slept.")),
        ("brown:cb02", ("A dog ran.",)),
    ]
    latin1 = "Headline\nCaf\xe9 news.\n\nNext story.\n".encode("latin-1")
    abc = _zip(tmp_path / "abc.zip", {"abc/README": b"x", "abc/rural.txt": latin1})
    docs = list(corpus.iter_plaintext_zip(abc, "abc"))
    assert [(d.index, d.doc_id, d.paragraphs) for d in docs] == [
        (0, "abc:rural:000000", ("Headline", "Café news.")),
        (1, "abc:rural:000001", ("Next story.",)),
    ]


def test_c4_malformed_row_names_file_and_row(tmp_path):
    path = tmp_path / "c4.json.gz"
    path.write_bytes(gzip.compress(b'{"text": "Fine document here."}\n{"txt": "no text key"}\n'))
    with pytest.raises(CorpusError, match=r"c4: file .*c4\.json\.gz, row 2"):
        list(corpus.iter_c4(path, CorpusStats("c4", "x")))


# Filtering and grouping ---------------------------------------------------------------------------------------


def _build(docs, **kw):
    stats = CorpusStats("t", "t")
    params = dict(corpus="t", n_sentences=100, sentences_per_passage=2, min_words=4, max_words=12, stats=stats,
                  progress=False)
    params.update(kw)
    return build_passages(docs, **params), stats


def test_passages_are_consecutive_filtered_and_deduplicated():
    docs = list(iter_cc100_format(CC100_TEXT.splitlines(), "t"))
    with pytest.warns(UserWarning, match="only 10 sentences"):
        passages, stats = _build(docs)
    assert [p.sentences for p in passages] == [
        ("The first document opens here.", "It has two sentences in its first paragraph."),
        ("Its second paragraph is one line.",),  # the next sentence is too long: the run breaks
        ("A second document starts after the blank line.", "It repeats nothing at all."),
        ("Short lines such as the one above are dropped.", "The run of sentences breaks there."),
        ("The third document follows two blank lines.", "It has a duplicate sentence in it."),
        ("And it closes with one more sentence of ordinary length.",),
    ]
    assert [p.passage_id for p in passages[:3]] == ["t-000000-000", "t-000000-001", "t-000001-000"]
    assert stats.dropped == {"more than 12 words": 1, "fewer than 4 words": 1, "duplicate": 1}
    assert stats.sentences_split == 13 and stats.sentences_kept == 10 and stats.passages == 6
    assert stats.passage_lengths == {1: 2, 2: 4} and stats.exhausted


def test_reading_stops_at_n_sentences_and_warns_when_the_corpus_runs_out():
    docs = list(iter_cc100_format(CC100_TEXT.splitlines(), "t"))
    passages, stats = _build(docs, n_sentences=3)
    assert sum(len(p.sentences) for p in passages) == 3 and stats.documents_read == 1
    with pytest.warns(UserWarning, match="only 10 sentences"):
        _, stats = _build(docs, n_sentences=50)
    assert stats.exhausted


def test_shuffle_is_seeded_and_complete():
    docs = [Document(i, str(i), ("x",)) for i in range(50)]
    a = [d.index for d in corpus.shuffled(docs, 1, 10)]
    assert a == [d.index for d in corpus.shuffled(docs, 1, 10)]
    assert a != [d.index for d in corpus.shuffled(docs, 2, 10)] and sorted(a) == list(range(50))


# load_passages on every source ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.txt.gz", "corpus.txt.xz"])
def test_text_file_corpus_is_deterministic_and_cached(tmp_path, monkeypatch, name):
    path = _text_file(tmp_path, name=name)
    cfg = _cfg(tmp_path, "data.corpus=text_file", f"data.corpus_file={path}", "data.n_sentences=8",
               "data.sentences_per_passage=2", "data.max_sentence_words=12")
    first = load_passages(cfg, progress=False)
    assert sum(len(p.sentences) for p in first) == 8
    assert all(p.source == "text_file" for p in first)
    assert corpus_label(cfg) == f"plain-text file in CC-100 format: {name}"
    monkeypatch.setattr(corpus, "iter_documents", lambda *a: pytest.fail("cache not used"))
    assert load_passages(cfg) == first
    assert load_corpus_stats(cfg).sentences_kept == 8


def test_seed_changes_the_document_order(tmp_path):
    path = _text_file(tmp_path)
    base = ["data.corpus=text_file", f"data.corpus_file={path}", "data.n_sentences=4", "data.max_sentence_words=12"]
    a = load_passages(_cfg(tmp_path, *base, "seed=0"), progress=False)
    b = load_passages(_cfg(tmp_path, *base, "seed=3"), progress=False)
    assert a == load_passages(_cfg(tmp_path / "again", *base, "seed=0"), progress=False)
    assert [p.doc_id for p in a] != [p.doc_id for p in b]


def test_cc100_streams_from_its_url_setting(tmp_path):
    path = _text_file(tmp_path, name="en.txt.xz")
    cfg = _cfg(tmp_path, "data.corpus=cc100", f"data.cc100_url={path}", "data.n_sentences=5",
               "data.max_sentence_words=12")
    passages = load_passages(cfg, progress=False)
    assert sum(len(p.sentences) for p in passages) == 5 and passages[0].source == "cc100"
    assert corpus_label(cfg) == "CC-100 English (streamed)"


def test_hub_fixture_dir_takes_the_place_of_the_cc100_url(tmp_path):
    paper = ["data.n_sentences=7", f"output_root={tmp_path}"]
    cfg = load_config("paper", [*paper, "data.hub_fixture_dir=tests/fixtures/hub"])
    assert corpus.cc100_source(cfg) == str(corpus.cc100_fixture(cfg)) and corpus.cc100_source(cfg).endswith(
        "tests/fixtures/hub/cc100/en.txt.xz")
    assert corpus.cc100_source(load_config("paper", paper)) == "https://data.statmt.org/cc-100/en.txt.xz"
    assert corpus.corpus_cache_key(cfg) != corpus.corpus_cache_key(load_config("paper", paper))
    assert sum(len(p.sentences) for p in load_passages(cfg, progress=False)) == 7
    assert corpus_label(cfg) == "CC-100 English (streamed) — test-fixture rows, not the real corpus"


def test_unreachable_cc100_address_fails_clearly(tmp_path):
    cfg = _cfg(tmp_path, "data.corpus=cc100", "data.cc100_url=https://127.0.0.1:9/cc-100/en.txt.xz")
    with pytest.raises(CorpusError, match=r"corpus address 'https://127\.0\.0\.1:9/.*' could not be opened"):
        load_passages(cfg)


def test_missing_files_and_absent_mirror_fail_clearly(tmp_path):
    cfg = _cfg(tmp_path, "data.corpus=text_file", f"data.corpus_file={tmp_path / 'nope.txt'}")
    with pytest.raises(CorpusError, match="nope.txt does not exist"):
        load_passages(cfg)
    cfg = _cfg(tmp_path, "data.corpus=brown")
    with pytest.raises(CorpusError, match=r"corpus brown: file .*brown\.zip is missing"):
        load_passages(cfg)
    cfg = _cfg(tmp_path, "data.corpus=c4", "data.source=mirror", f"data.mirror_dir={tmp_path / 'empty'}")
    with pytest.raises(CorpusError, match="c4-sample.*is missing"):
        load_passages(cfg)


def test_tiny_reads_the_fixture_mirror_without_the_real_one(tmp_path):
    cfg = _cfg(tmp_path)
    passages = load_passages(cfg, progress=False)
    assert sum(len(p.sentences) for p in passages) == cfg.data.n_sentences
    assert all(1 <= len(p.sentences) <= cfg.data.sentences_per_passage for p in passages)
    assert "stand-in for CC-100" in corpus_label(cfg) and "test-fixture" in corpus_label(cfg)
    assert passages[0].source == "c4 (stand-in for CC-100)"
    stats = corpus.corpus_summary_table(load_corpus_stats(cfg))
    assert stats.set_index("count").loc["sentences in passages", "value"] == 12


@needs_mirror
@pytest.mark.parametrize("name", ["c4", "wikitext2", "brown", "abc", "webtext", "state_union"])
def test_every_stand_in_corpus_reads_from_the_mirror(tmp_path, name):
    cfg = load_config("smoke", [f"output_root={tmp_path}", f"data.corpus={name}", "data.n_sentences=60"])
    passages = load_passages(cfg, progress=False)
    assert sum(len(p.sentences) for p in passages) == 60
    assert all(p.source == f"{name} (stand-in for CC-100)" for p in passages)
    assert "stand-in for CC-100" in corpus_label(cfg)
    text = " ".join(s for p in passages for s in p.sentences)
    assert "<unk>" not in text and "/nn" not in text and " @-@ " not in text


@needs_mirror
def test_c4_sample_has_its_thousand_documents():
    stats = CorpusStats("c4", "x")
    docs = list(corpus.iter_c4(MIRROR / corpus.MIRROR_PATHS["c4"], stats))
    assert len(docs) == 1000 and json.dumps(stats.source_skipped) == "{}"
