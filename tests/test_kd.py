"""brdlib.kd: the forward/reverse KL losses on hand-made logits, a KD step lowering the KL, tiny KD students that
are saved, found by store.resolve_model, reused when up to date and retrained when stale, the vocabulary
check, and released checkpoints used without training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from brdlib.config import ConfigError, load_config
from brdlib.kd import (
    KDError,
    ensure_kd_students,
    kd_loss,
    kd_texts,
    next_token_mask,
    plan_kd_student,
    shared_vocabulary_size,
    train_kd_student,
)
from brdlib.models import build_tiny_random, load_model, tiny_tokenizer
from brdlib.packing import IGNORE_INDEX, load_tokenizer
from brdlib.records import KD_KINDS
from brdlib.store import SUMMARY_FILE, load_summary, resolve_model, student_dir
from brdlib.train import TrainError, training_table


def tiny_cfg(root, *overrides):
    return load_config("tiny", [f"output_root={root}", *overrides])


def direct_kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) of two probability vectors, by the definition."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


# The loss ---------------------------------------------------------------------------------------------------


def test_kd_released_must_name_each_kd_kind():
    """Config validation of ``kd.released`` follows brdlib.kd's kinds: one missing or one unknown is refused."""
    from brdlib.config import Config

    base = load_config("tiny").model_dump()
    with pytest.raises(ValueError, match="exactly the KD kinds skd, minillm"):
        Config.model_validate({**base, "kd": {**base["kd"], "released": {"skd": "a/b"}}})
    with pytest.raises(ValueError, match="exactly the KD kinds"):
        Config.model_validate({**base, "kd": {**base["kd"], "released": {"skd": "a/b", "minillm": "c/d", "x": "e/f"}}})
    ok = Config.model_validate({**base, "kd": {**base["kd"], "released": {"skd": "a/b", "minillm": "c/d"}}})
    assert ok.kd.released == {"skd": "a/b", "minillm": "c/d"}


@pytest.mark.parametrize("kind", list(KD_KINDS))
def test_loss_is_zero_for_equal_distributions(kind):
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert kd_loss(logits, logits.clone(), mask, kind).item() == pytest.approx(0.0, abs=1e-6)
    # a constant shift of the logits is the same distribution
    assert kd_loss(logits + 3.0, logits, mask, kind).item() == pytest.approx(0.0, abs=1e-5)


def test_forward_and_reverse_match_the_definition_and_differ():
    p, q = [0.9, 0.09, 0.01], [0.3, 0.3, 0.4]
    teacher = torch.tensor([p]).log().unsqueeze(0)   # (1, 1, 3) logits of p
    student = torch.tensor([q]).log().unsqueeze(0)
    mask = torch.ones(1, 1, dtype=torch.bool)
    forward = kd_loss(student, teacher, mask, "skd").item()
    reverse = kd_loss(student, teacher, mask, "minillm").item()
    assert forward == pytest.approx(direct_kl(p, q), rel=1e-5)
    assert reverse == pytest.approx(direct_kl(q, p), rel=1e-5)
    assert abs(forward - reverse) > 0.05


def test_temperature_softens_both_and_scales_by_t_squared():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 4, 7, generator=gen), torch.randn(1, 4, 7, generator=gen)
    mask = torch.ones(1, 4, dtype=torch.bool)
    T = 2.0
    p, q = torch.softmax(t / T, -1), torch.softmax(s / T, -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean().item() * T**2
    assert kd_loss(s, t, mask, "skd", temperature=T).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", list(KD_KINDS))
def test_masked_positions_do_not_count(kind):
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 6, 9, generator=gen), torch.randn(2, 6, 9, generator=gen)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    base = kd_loss(s, t, mask, kind)
    s2, t2 = s.clone(), t.clone()
    s2[1, 3:] = torch.randn(3, 9, generator=gen) * 10
    t2[1, 3:] = torch.randn(3, 9, generator=gen) * 10
    assert kd_loss(s2, t2, mask, kind).item() == pytest.approx(base.item(), rel=1e-6)
    # the mean runs over real positions only: equal to the loss of the real positions alone
    alone = torch.stack([kd_loss(s[i:i + 1, j:j + 1], t[i:i + 1, j:j + 1], torch.ones(1, 1, dtype=torch.bool), kind)
                         for i in range(2) for j in range(6) if mask[i, j]]).mean()
    assert base.item() == pytest.approx(alone.item(), rel=1e-5)
    # nothing to learn from: zero, with a gradient
    s.requires_grad_(True)
    empty = kd_loss(s, t, torch.zeros(2, 6, dtype=torch.bool), kind)
    empty.backward()
    assert empty.item() == 0.0 and s.grad is not None and not s.grad.any()


def test_next_token_mask_follows_the_labels():
    labels = torch.tensor([[5, 6, 7, IGNORE_INDEX, IGNORE_INDEX]])
    assert next_token_mask(labels).tolist() == [[True, True, False, False]]


def test_loss_rejects_bad_inputs():
    x = torch.zeros(1, 2, 5)
    with pytest.raises(KDError, match="unknown KD kind 'jsd'; accepted: skd, minillm"):
        kd_loss(x, x, torch.ones(1, 2, dtype=torch.bool), "jsd")
    with pytest.raises(KDError, match="differ in shape"):
        kd_loss(x, torch.zeros(1, 2, 6), torch.ones(1, 2, dtype=torch.bool), "skd")


def test_matches_trl_generalized_jsd_at_the_extremes():
    """TRL's convention: beta=0 is forward KL(teacher || student), beta=1 reverse KL (no T^2 factor)."""
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 13, generator=gen), torch.randn(2, 5, 13, generator=gen)
    labels = torch.ones(2, 5, dtype=torch.long)
    labels[0, 3:] = IGNORE_INDEX
    for kind, beta in (("skd", 0.0), ("minillm", 1.0)):
        ours = kd_loss(s, t, labels != IGNORE_INDEX, kind).item()
        theirs = gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta).item()
        assert ours == pytest.approx(theirs, rel=1e-5), kind


@pytest.mark.parametrize("kind", list(KD_KINDS))
def test_a_few_steps_lower_the_kl_on_their_batch(kind):
    torch.manual_seed(0)
    teacher, tok = build_tiny_random(1)
    student, _ = build_tiny_random(0)
    ids = torch.tensor([tok("Paris is the capital of France. The river Seine flows.")["input_ids"]] * 2)
    mask = torch.ones(2, ids.shape[1] - 1, dtype=torch.bool)
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits[:, :-1]
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = kd_loss(student(input_ids=ids).logits[:, :-1], t_logits, mask, kind)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.7 * losses[0]


# Vocabulary --------------------------------------------------------------------------------------------------


def test_shared_vocabulary_is_checked():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert shared_vocabulary_size(a, b, "t", "s") == len(a)
    b.add_tokens(["<extra-token>"])
    with pytest.raises(KDError, match=r"teacher 't' has 479 tokens and student 's' has 480"):
        shared_vocabulary_size(a, b, "t", "s")


def test_training_with_a_teacher_of_another_vocabulary_fails_clearly(tmp_path):
    model, tok = build_tiny_random(2)
    tok.add_tokens(["<extra-token>"])
    model.resize_token_embeddings(len(tok))
    other = tmp_path / "other-vocab"
    model.save_pretrained(other)
    tok.save_pretrained(other)
    cfg = tiny_cfg(tmp_path / "out", f"kd.teacher={other}")
    with pytest.raises(KDError, match=r"teacher .*other-vocab' has 480 tokens and student 'tiny-random:0' has 479"):
        train_kd_student(cfg, "skd", progress=False)
    assert not (cfg.data_dir / "students" / "skd").exists()


def test_a_kd_block_longer_than_the_student_allows_is_refused(tmp_path):
    """A KD length past a GPT-2 student's n_positions crashed at the first step; now an error names the key."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=1, n_head=2))
    gpt2.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    cfg = tiny_cfg(tmp_path / "out", f"kd.student={tmp_path / 'gpt2'}", "recipes.kd.max_length=64")
    with pytest.raises(TrainError, match=r"recipes\.kd\.max_length=64 is longer than model .*gpt2' allows: its "
                                         r"config's n_positions=32 positions; set recipes\.kd\.max_length to at "
                                         r"most 32"):
        train_kd_student(cfg, "skd", progress=False)
    assert not (cfg.data_dir / "students" / "skd").exists()


def test_unknown_model_and_kind_fail_clearly(tmp_path):
    cfg = tiny_cfg(tmp_path, "kd.teacher=nonexistent_role")
    with pytest.raises(KDError, match=r"kd.teacher='nonexistent_role': model 'nonexistent_role' is not a role of "
                       r"profile 'tiny' \(teacher, student\), not a trained student"):
        plan_kd_student(cfg, "skd")
    with pytest.raises(KDError, match="unknown KD kind"):
        plan_kd_student(tiny_cfg(tmp_path), "seqkd")


def test_kd_texts_are_the_original_passages(tmp_path):
    cfg = tiny_cfg(tmp_path)
    texts = kd_texts(cfg, tiny_tokenizer())
    assert texts and all(" <sep> " in t for t in texts if t.count(".") > 1)
    assert not any("Entities" in t for t in texts)   # no teacher annotations


# Training ------------------------------------------------------------------------------------------------------


def test_tiny_kd_students_are_saved_found_and_reused(tmp_path):
    cfg = tiny_cfg(tmp_path)
    refs = ensure_kd_students(cfg, progress=False)
    assert refs == {"skd": "skd", "minillm": "minillm"}
    for kind in KD_KINDS:
        path = student_dir(cfg, kind)
        assert resolve_model(cfg, kind).spec == str(path)
        summary = load_summary(cfg, kind)
        assert summary["kind"] == kind and summary["steps"] == summary["max_steps"] == cfg.recipe("kd").max_steps
        # written by brdlib.train's one training path, with recipe kd's settings
        assert summary["recipe"] == "kd" and summary["learning_rate"] == cfg.recipe("kd").learning_rate == 1e-4
        assert summary["global_batch"] == 2 and summary["max_length"] == 64 and summary["loss_mode"].startswith(kind)
        assert summary["teacher"] == "tiny-random:1" and summary["init"] == "tiny-random:0"
        assert summary["first_loss"] is not None and summary["tokens_per_second"] > 0
        loaded = load_model(str(path))
        assert loaded.n_params == summary["n_params"]
    assert not (student_dir(cfg, "skd").parent / ".skd.tmp").exists()
    table = training_table([load_summary(cfg, k) for k in KD_KINDS])
    assert list(table["student"]) == ["skd", "minillm"]

    # up to date: returned without training (the saved files are untouched)
    stamp = (student_dir(cfg, "skd") / SUMMARY_FILE).stat().st_mtime_ns
    assert ensure_kd_students(cfg, progress=False) == refs
    assert train_kd_student(cfg, "skd", progress=False) == student_dir(cfg, "skd")
    assert (student_dir(cfg, "skd") / SUMMARY_FILE).stat().st_mtime_ns == stamp

    # stale: another learning rate retrains
    cfg2 = tiny_cfg(tmp_path, "recipes.kd.learning_rate=5e-4")
    train_kd_student(cfg2, "skd", progress=False)
    new = json.loads((student_dir(cfg2, "skd") / SUMMARY_FILE).read_text())
    assert new["learning_rate"] == 5e-4 and new["fingerprint"] != load_summary(cfg, "minillm")["fingerprint"]
    assert (student_dir(cfg, "skd") / SUMMARY_FILE).stat().st_mtime_ns != stamp


def test_released_checkpoints_are_returned_without_training(tmp_path):
    cfg = tiny_cfg(tmp_path, "kd.released={skd: MiniLLM/KD-gpt2-760M, minillm: MiniLLM/MiniLLM-gpt2-760M}")
    assert ensure_kd_students(cfg) == {"skd": "MiniLLM/KD-gpt2-760M", "minillm": "MiniLLM/MiniLLM-gpt2-760M"}
    assert not (cfg.data_dir / "students").exists()
    assert load_config("paper").kd.released == {"skd": "MiniLLM/KD-gpt2-760M",
                                                "minillm": "MiniLLM/MiniLLM-gpt2-760M"}
    with pytest.raises(ConfigError, match="kd.released must name exactly the KD kinds skd, minillm"):
        tiny_cfg(tmp_path, "kd.released={skd: a/b, seqkd: c/d}")


@pytest.mark.embedded
def test_smoke_kd_models_share_a_vocabulary():
    """The smoke pair (Qwen2.5-Coder-1.5B -> 0.5B): identical tokenizers; skips unless both are converted."""
    from brdlib.embedded import CONVERTED_DTYPES, get_embedded, is_converted

    cfg = load_config("smoke")
    roles = cfg.models.roles()
    for role in (cfg.kd.teacher, cfg.kd.student):
        if not any(is_converted(get_embedded(roles[role]), d) for d in CONVERTED_DTYPES):
            pytest.skip(f"embedded model {roles[role]} is not converted (brd-models prepare {roles[role]})")
    teacher, student = (roles[cfg.kd.teacher], roles[cfg.kd.student])
    assert shared_vocabulary_size(load_tokenizer(teacher), load_tokenizer(student), teacher, student) == 151_936


def test_precomputed_teacher_logits_train_the_same_students_as_the_online_teacher(tmp_path, monkeypatch):
    """kd.teacher_logits=precomputed (smoke: the 1.5B teacher and the 0.5B student never share memory) reads the same
    teacher logits on the same blocks as the online teacher, so both give the same students; the teacher is read once
    for both kinds, one forward per block."""
    import brdlib.kd as kd_mod

    online = tiny_cfg(tmp_path / "online", "recipes.kd.batch_size=1")
    pre = tiny_cfg(tmp_path / "pre", "recipes.kd.batch_size=1", "kd.teacher_logits=precomputed")
    calls = []
    real = kd_mod.precompute_teacher_logits
    monkeypatch.setattr(kd_mod, "precompute_teacher_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert ensure_kd_students(pre, progress=False) == ensure_kd_students(online, progress=False)
    assert calls == [1]
    blocks, _ = kd_mod.kd_blocks(pre, plan_kd_student(pre, "skd"))
    assert len(blocks) == pre.recipe("kd").max_steps and sorted(blocks["index"]) == list(range(len(blocks)))
    for kind in KD_KINDS:
        a, b = load_model(str(student_dir(online, kind))).model, load_model(str(student_dir(pre, kind))).model
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
        assert load_summary(pre, kind)["teacher_logits"] == "precomputed"
        assert load_summary(pre, kind)["final_loss"] == load_summary(online, kind)["final_loss"]


def test_plus_brd_trains_with_kd_brd_optim(tmp_path, monkeypatch):
    """'+BRD' of the 0.5B KD students: smoke names torch's Adafactor (AdamW's moments would add 5 GB; transformers'
    Adafactor holds ~0.5 GB more at its step), and it is the optimizer that steps; the summary says so."""
    import torch

    from brdlib.blind import train_kd_brd_students

    assert load_config("smoke").recipe("kd_brd").optim == "adafactor_torch"
    assert load_config("smoke").recipe("kd").optim == "adafactor_torch"
    assert load_config("smoke").recipe("kd_brd").mmap_threshold_kib == 256
    cfg = tiny_cfg(tmp_path, "recipes.kd_brd.optim=adafactor_torch")
    assert tiny_cfg(tmp_path).recipe("kd_brd").optim == "adamw_torch"
    refs = ensure_kd_students(cfg, progress=False)
    steps, real_step = [], torch.optim.Adafactor.step
    monkeypatch.setattr(torch.optim.Adafactor, "step",
                        lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    names = train_kd_brd_students(cfg, {"skd": refs["skd"]}, progress=False)
    assert load_summary(cfg, names["skd_brd"])["optim"] == "adafactor_torch"
    assert load_summary(cfg, names["skd_brd"])["recipe"] == "kd_brd"
    assert len(steps) == cfg.recipe("kd_brd").max_steps == 1


def test_kd_trains_through_the_one_training_function():
    """kd.py keeps what is KD's own and trains through brdlib.train.train_model; it imports no private name of
    brdlib.train, and no function of either module is over 80 lines."""
    import ast
    import inspect

    import brdlib.kd
    import brdlib.train

    tree = ast.parse(inspect.getsource(brdlib.kd))
    private = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "brdlib.train"
               for a in node.names if a.name.startswith("_")]
    assert not private, f"kd.py imports private names of brdlib.train: {private}"
    train_kd = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_kd_student")
    called = {n.func.id for n in ast.walk(train_kd) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "train_model" in called and "TrainingArguments" not in called and "run_and_save" not in called
    for module in (brdlib.kd, brdlib.train):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 80, f"{module.__name__}.{node.name} is over 80 lines"
