"""brdlib.train: packing keeps every token, the chunked loss equals the standard one, resume after a kill gives
the same weights, finished students are reused, and DDP over two CPU processes trains the same model."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from brdlib.assemble import AssembleError, assemble_variant, encode_passages
from brdlib.config import REPO_ROOT, load_config
from brdlib.models import build_tiny_random, load_model, tiny_tokenizer
from brdlib.packing import IGNORE_INDEX, PackingError, pack_dataset, pack_sequences
from brdlib.store import StoreError, checkpoints_dir, load_summary, resolve_model, student_dir
from brdlib.train import (
    TrainError,
    check_chunked_loss,
    chunked_causal_lm_loss,
    chunked_loss,
    flops_per_token,
    has_weights,
    last_complete_checkpoint,
    loss_curve_figure,
    pack_variant,
    peak_flops,
    per_device_batch,
    run_and_save,
    train_student,
    training_table,
    use_chunked_loss,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_assemble import corpus  # noqa: E402  (fixture passages and behaviour records)


def real_tokens(packed) -> list[int]:
    """The tokens of packed blocks where the attention mask is 1, in order."""
    return [t for ids, m in zip(packed["input_ids"], packed["attention_mask"], strict=True)
            for t, k in zip(ids, m, strict=True) if k]


def tiny_cfg(root, *overrides):
    return load_config("tiny", [f"output_root={root}", *overrides])


# Packing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths, block", [([5, 3, 9, 1], 4), ([4, 4], 4), ([17], 5), ([1] * 10, 3), ([], 8)])
def test_packing_keeps_every_token(lengths, block):
    rng = random.Random(0)
    seqs = [[rng.randrange(1, 50) for _ in range(n)] for n in lengths]
    packed = pack_sequences(seqs, block, pad_id=0)
    flat = [t for s in seqs for t in s]
    real = real_tokens(packed)
    assert real == flat  # every token, once, in order
    assert len(packed["input_ids"]) == -(-len(flat) // block)
    assert all(len(b) == block for key in packed for b in packed[key])
    assert all(sum(m) == block for m in packed["attention_mask"][:-1])  # only the last block is padded
    for ids, m, lab in zip(packed["input_ids"], packed["attention_mask"], packed["labels"], strict=True):
        assert lab == [t if k else IGNORE_INDEX for t, k in zip(ids, m, strict=True)]  # loss on real tokens only


def test_pack_dataset_counts_and_pads_per_group():
    import datasets

    tok = tiny_tokenizer()
    texts = [f"Paris is the capital of France, sentence {i}." * (1 + i % 3) for i in range(10)]
    ds = datasets.Dataset.from_dict({"text": texts, "kind": ["ori"] * 10})
    lengths = [len(x) for x in encode_passages(tok, texts)]
    packed, stats = pack_dataset(ds, tok, block_size=16, group_passages=4)
    assert stats.real_tokens == sum(lengths) == sum(sum(m) for m in packed["attention_mask"])
    groups = [sum(lengths[i:i + 4]) for i in range(0, 10, 4)]
    assert stats.blocks == len(packed) == sum(-(-g // 16) for g in groups)
    assert stats.pad_tokens == stats.blocks * 16 - stats.real_tokens
    assert 0 <= stats.pad_fraction < 3 * 16 / (stats.blocks * 16)  # at most one partial block per group
    assert packed.column_names == ["input_ids", "attention_mask", "labels"]
    eos = tok.eos_token_id
    real = real_tokens(packed)
    assert real.count(eos) == 10  # each passage closed by eos
    with pytest.raises(PackingError, match="empty"):
        pack_dataset(ds.select([]), tok, 16, 4)


# Chunked cross-entropy ------------------------------------------------------------------------------------


def _batch(vocab, b=2, t=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=gen)
    labels = ids.clone()
    labels[1, 13:] = IGNORE_INDEX  # a padded tail
    mask = (labels != IGNORE_INDEX).long()
    return ids, mask, labels


def _loss_and_grads(model, ids, mask, labels, **kw):
    model.zero_grad()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, **kw).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_chunked_loss_equals_the_standard_loss_and_gradients():
    model, _ = build_tiny_random(0)
    ids, mask, labels = _batch(model.config.vocab_size)
    ref, ref_grads = _loss_and_grads(model, ids, mask, labels)
    with chunked_loss(model, chunk_tokens=7):
        got, grads = _loss_and_grads(model, ids, mask, labels)
    assert torch.allclose(ref, got, atol=1e-6)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        assert torch.allclose(ref_grads[name], grads[name], atol=1e-6), name
    # restored afterwards
    assert "forward" not in model.get_output_embeddings().__dict__ and "_loss_function" not in model.__dict__
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


def test_chunked_loss_normalises_by_num_items_like_the_trainer():
    torch.manual_seed(0)
    hidden, weight = torch.randn(2, 6, 8), torch.randn(11, 8)
    labels = torch.randint(0, 11, (2, 6))
    logits = hidden @ weight.T
    flat = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                             reduction="sum")
    got = chunked_causal_lm_loss(hidden, labels, weight, chunk_tokens=4, num_items_in_batch=torch.tensor(25))
    assert torch.allclose(got, flat / 25, atol=1e-5)


def test_chunked_loss_on_a_tied_xglm_and_refused_for_softcapped_logits():
    from transformers import Gemma2Config, Gemma2ForCausalLM, XGLMConfig, XGLMForCausalLM

    torch.manual_seed(0)
    xglm = XGLMForCausalLM(XGLMConfig(vocab_size=300, d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                      max_position_embeddings=64))
    assert xglm.get_output_embeddings().weight is xglm.get_input_embeddings().weight  # tied, as XGLM-564M
    assert check_chunked_loss(xglm, chunk_tokens=5) < 1e-5
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           final_logit_softcapping=30.0))
    with pytest.raises(TrainError, match="soft-caps"):
        with chunked_loss(gemma, 8):
            pass


def test_loss_mode_follows_the_vocabulary():
    cfg = load_config("tiny")
    assert not use_chunked_loss(cfg, 49_152) and use_chunked_loss(cfg, 256_008)  # SmolLM2 vs XGLM
    assert use_chunked_loss(load_config("tiny", ["train.loss=chunked"]), 512)
    assert not use_chunked_loss(load_config("tiny", ["train.loss=standard"]), 256_008)


# Batch, throughput, names -----------------------------------------------------------------------------------


def test_global_batch_is_split_over_processes():
    assert per_device_batch(8, 4, 1) == 2 and per_device_batch(8, 1, 2) == 4
    with pytest.raises(TrainError, match="batch_size=8.*3 process.*multiple of 3"):
        per_device_batch(8, 3, 1)


def test_mfu_inputs():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-40GB") == 312e12 and peak_flops("cpu") is None
    assert flops_per_token(100, 2, 8, 16) == 600 + 12 * 2 * 8 * 16


def test_names_are_checked(tmp_path):
    with pytest.raises(StoreError, match="plain directory name"):
        student_dir(tiny_cfg(tmp_path), "a/b")


def test_unknown_variant_or_init_is_a_clear_error(tmp_path):
    with pytest.raises(AssembleError, match="'nope' is neither assembled.*brd_frac"):
        train_student(tiny_cfg(tmp_path), "nope", "x")
    with pytest.raises(StoreError, match=r"model 'brd' is not a role .*, not a trained student \(none yet\) and not a"):
        resolve_model(tiny_cfg(tmp_path), "brd")  # the rule train_student resolves its init with


def test_incomplete_checkpoints_are_skipped(tmp_path):
    for step, complete in [(2, True), (4, True), (6, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert (tmp_path / "checkpoint-6").exists()
    last_complete_checkpoint(tmp_path, remove_partial=True)
    assert not (tmp_path / "checkpoint-6").exists()
    assert last_complete_checkpoint(tmp_path / "none") is None


# Training on the tiny profile ----------------------------------------------------------------------------


@pytest.fixture
def tiny_brd(tmp_path):
    """A tiny profile under tmp_path with the brd and ori variants assembled from fixtures."""
    cfg = tiny_cfg(tmp_path, "recipes.brd.max_steps=4", "train.save_steps=2")
    passages, recs = corpus(12)
    for variant in ("brd", "ori"):
        assemble_variant(cfg, variant, passages=passages, behaviours=recs)
    return cfg


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(str(path)).model.state_dict()


def _assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=0), k


KILL_AFTER_SAVE = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from brdlib.config import load_config
    from brdlib.train import train_student

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = load_config("tiny", [f"output_root={sys.argv[1]}", "recipes.brd.max_steps=4", "train.save_steps=2"])
    train_student(cfg, "brd", "resumed", callbacks=[KillAfterSave()], progress=False)
""")


def test_resume_after_a_kill_gives_the_same_weights(tiny_brd, tmp_path):
    cfg = tiny_brd
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, str(tmp_path), "2"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (checkpoints_dir(cfg, "resumed") / "checkpoint-2" / "trainer_state.json").is_file()
    assert not student_dir(cfg, "resumed").exists()

    resumed = train_student(cfg, "brd", "resumed", progress=False)
    straight = train_student(cfg, "brd", "straight", progress=False)
    a, b = load_summary(cfg, "resumed"), load_summary(cfg, "straight")
    assert a["resumed_from_step"] == 2 and b["resumed_from_step"] == 0
    assert a["steps"] == b["steps"] == 4 and a["tokens_seen"] == b["tokens_seen"]
    assert [h["loss"] for h in a["log_history"]] == [h["loss"] for h in b["log_history"]]
    _assert_same_weights(resumed, straight)
    assert not checkpoints_dir(cfg, "resumed").exists()  # removed once saved (train.keep_checkpoints=false)


def test_the_last_step_writes_the_student_not_a_checkpoint_too(tiny_brd):
    """The Trainer checkpoints the last step and the final model is saved right after: that checkpoint (weights and
    optimizer state, never resumed from) is skipped, also with train.keep_checkpoints; earlier ones are written."""
    from transformers import TrainerCallback

    class Saves(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_save(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    runs = {}
    for name, steps, keep in [("dropped", 4, False), ("odd_end", 3, True), ("kept", 4, True)]:
        cfg = tiny_brd
        saves = Saves()
        train_student(cfg, "brd", name, recipe=cfg.recipe("brd", keep_checkpoints=keep), max_steps=steps,
                      callbacks=[saves], progress=False)
        runs[name] = saves.steps
        assert load_summary(cfg, name)["steps"] == steps and has_weights(student_dir(cfg, name))
    assert runs == {"dropped": [2], "odd_end": [2], "kept": [2]}
    assert [p.name for p in checkpoints_dir(tiny_brd, "kept").glob("checkpoint-*")] == ["checkpoint-2"]


def test_finished_student_is_reused_and_loads_by_path(tiny_brd):
    cfg = tiny_brd
    path = train_student(cfg, "ori", "further", recipe="further", progress=False)
    summary = load_summary(cfg, "further")
    assert summary["steps"] == summary["max_steps"] == cfg.recipe("further").max_steps == 2
    assert summary["variant"] == "ori" and summary["recipe"] == "further"
    assert summary["packing"]["pad_tokens"] < 128  # one partial block
    assert summary["tokens_per_second"] > 0 and summary["first_loss"] > 0 and len(summary["log_history"]) == 2
    stamp = (path / "train_summary.json").stat().st_mtime_ns
    assert train_student(cfg, "ori", "further", recipe=cfg.recipe("further"), progress=False) == path
    assert (path / "train_summary.json").stat().st_mtime_ns == stamp  # reused, not retrained
    loaded = load_model(str(path))
    assert loaded.kind == "local" and loaded.tokenizer.eos_token == "<|endoftext|>"
    # another step count is another student: retrained in place
    train_student(cfg, "ori", "further", recipe="further", max_steps=3, progress=False)
    assert load_summary(cfg, "further")["steps"] == 3
    # init from a trained student by name (BRD² starts from XGLM-BRD)
    train_student(cfg, "brd", "brd2", init="further", max_steps=1, progress=False)
    assert load_summary(cfg, "brd2")["init"] == str(student_dir(cfg, "further"))
    table = training_table([load_summary(cfg, n) for n in ("further", "brd2")])
    assert list(table["student"]) == ["further", "brd2"] and table["tokens/s"].gt(0).all()
    assert loss_curve_figure([load_summary(cfg, "further")]).axes[0].get_lines()


@pytest.mark.slow
def test_ddp_two_cpu_processes_trains_the_same_model(tiny_brd, tmp_path):
    """accelerate launch with configs/accelerate/cpu_2proc.yaml: 2 processes x 1 block = the global batch of 2."""
    cfg = tiny_brd
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = ["accelerate", "launch", "--config_file", str(REPO_ROOT / "configs/accelerate/cpu_2proc.yaml"),
           "-m", "brdlib.cli", "train", "tiny", f"output_root={tmp_path}", "recipes.brd.max_steps=4",
           "train.save_steps=2", "--variant", "brd", "--name", "ddp"]
    run = subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:") or "Error:" in ln]
    assert run.returncode == 0, "\n".join(errors[:10]) + "\n...\n" + run.stderr[-3000:]
    ddp = load_summary(cfg, "ddp")
    assert ddp["world_size"] == 2 and ddp["per_device_batch"] == 1 and ddp["steps"] == 4
    single = train_student(cfg, "brd", "single", progress=False)
    one = load_summary(cfg, "single")
    assert ddp["tokens_seen"] == one["tokens_seen"]
    assert [round(h["loss"], 4) for h in ddp["log_history"]] == [round(h["loss"], 4) for h in one["log_history"]]
    _assert_same_weights(student_dir(cfg, "ddp"), single, atol=1e-5)
    json.dumps(ddp)  # the summary is plain JSON


def test_chunked_loss_and_gradient_checkpointing_train_like_the_standard_loss(tiny_brd, tmp_path):
    cfg = tiny_brd
    train_student(cfg, "brd", "standard", max_steps=2, progress=False)
    other = tiny_cfg(tmp_path, "recipes.brd.max_steps=4", "train.save_steps=2", "train.loss=chunked",
                     "train.loss_chunk_tokens=50", "train.gradient_checkpointing=true")
    train_student(other, "brd", "chunked", max_steps=2, progress=False)
    a, b = load_summary(cfg, "standard"), load_summary(other, "chunked")
    assert a["loss_mode"] == "standard" and b["loss_mode"] == "chunked" and b["gradient_checkpointing"]
    assert [h["loss"] for h in a["log_history"]] == pytest.approx([h["loss"] for h in b["log_history"]], abs=1e-5)
    _assert_same_weights(student_dir(cfg, "standard"), student_dir(other, "chunked"), atol=1e-5)


# Lengths, packing cache, FSDP, process-group timeout ------------------------------------------------------------


def _tiny_gpt2(folder: Path, n_positions: int) -> Path:
    """A tiny random GPT-2 (learned positions: it crashes past n_positions) with the tiny tokenizer, saved."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=1,
                                       n_head=2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_block_longer_than_the_model_allows_is_refused(tiny_brd, tmp_path):
    """Table 4's '+BRD' on GPT-2 students (1,024 positions) at the student's 2,048 crashed at step one."""
    gpt2 = str(_tiny_gpt2(tmp_path / "gpt2", n_positions=64))
    with pytest.raises(TrainError, match=r"train\.max_length=128 is longer than model .*gpt2.* n_positions=64 "
                                         r"positions; set train\.max_length to at most 64.*recipes\.<name>"):
        train_student(tiny_brd, "brd", "long", init=gpt2, max_steps=1, progress=False)
    assert not student_dir(tiny_brd, "long").exists()
    # a recipe that sets its own length is named as the key to change
    with pytest.raises(TrainError, match=r"recipes\.kd_brd\.max_length=96 is longer .* set recipes\.kd_brd\."
                                         r"max_length to at most 64"):
        train_student(tiny_cfg(tmp_path, "recipes.kd_brd.max_length=96"), "brd", "long", init=gpt2,
                      recipe="kd_brd", progress=False)
    fits = tiny_cfg(tmp_path, "train.max_length=64")
    train_student(fits, "brd", "fits", init=gpt2, max_steps=1, progress=False)
    assert load_summary(fits, "fits")["max_length"] == 64


def test_packing_is_a_cached_step_that_training_reuses(tiny_brd, tmp_path, monkeypatch):
    """--pack-only (before accelerate launch) tokenises once; a second pack and the training read the cache."""
    import brdlib.packing

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = subprocess.run([sys.executable, "-m", "brdlib.cli", "train", "tiny", f"output_root={tmp_path}", "--variant",
                          "brd", "--pack-only"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    folder = Path(cli.stdout.strip().split(" in ")[-1])
    assert folder.parent == tiny_brd.data_dir / "packed" and (folder / "blocks.arrow").is_file()
    assert not list(folder.parent.glob(".*"))  # written under a temporary name, renamed into place

    def no_tokenising(*args, **kwargs):
        raise AssertionError("packed again instead of reading the cache")

    monkeypatch.setattr(brdlib.packing, "pack_dataset", no_tokenising)
    again, stats = pack_variant(tiny_brd, "brd")
    assert again == folder and stats.blocks > 0 and stats.block_size == 128
    train_student(tiny_brd, "brd", "from_cache", max_steps=1, progress=False)
    assert load_summary(tiny_brd, "from_cache")["packing"] == stats.as_dict()
    with pytest.raises(AssertionError, match="packed again"):  # another block length is another cache entry
        pack_variant(tiny_cfg(tmp_path, "train.max_length=64"), "brd")


def test_timeout_and_gradient_checkpointing_reach_the_trainer(tiny_brd, tmp_path, monkeypatch):
    import accelerate
    from transformers import TrainerCallback

    seen: dict = {}
    real_state = accelerate.PartialState

    def partial_state(*args, **kwargs):
        seen["state_timeout"] = kwargs.get("timeout")
        return real_state(*args, **kwargs)

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.update(ddp_timeout=args.ddp_timeout, checkpointing=args.activation_checkpointing,
                        model_checkpointing=model.is_activation_checkpointing)

    monkeypatch.setattr(accelerate, "PartialState", partial_state)
    cfg = tiny_cfg(tmp_path, "train.ddp_timeout=4321", "train.gradient_checkpointing=true")
    train_student(cfg, "brd", "spied", max_steps=1, callbacks=[Spy()], progress=False)
    assert seen["state_timeout"].total_seconds() == 4321 and seen["ddp_timeout"] == 4321
    assert seen["checkpointing"] is True and seen["model_checkpointing"] is True


def test_paper_profile_fits_its_models():
    """'+BRD' on the released GPT-2 760M students (n_positions 1,024); XGLM-564M at 2x2,048 per GPU checkpointed."""
    cfg = load_config("paper")
    assert cfg.recipe("kd_brd").max_length <= 1024 and cfg.recipe("brd").max_length <= 2048
    assert cfg.train.gradient_checkpointing and cfg.train.ddp_timeout >= 3600


def test_no_summary_is_written_beside_no_weights(tiny_brd, monkeypatch):
    """What FSDP's SHARDED_STATE_DICT did: Trainer.save_model wrote nothing and a summary went beside nothing."""
    from transformers import Trainer

    save = Trainer.save_model

    def final_save_writes_nothing(self, output_dir=None, _internal_call=False):
        if _internal_call:  # checkpoints are saved as usual
            save(self, output_dir, _internal_call)

    monkeypatch.setattr(Trainer, "save_model", final_save_writes_nothing)
    with pytest.raises(TrainError, match="no model weights were written"):
        train_student(tiny_brd, "brd", "weightless", max_steps=1, progress=False)
    assert not student_dir(tiny_brd, "weightless").exists()


def test_fsdp_cpu_config_mirrors_the_gpu_one():
    """The CPU rehearsal shards exactly as configs/accelerate/fsdp_4gpu.yaml does; only processes and precision."""
    import yaml

    cpu, gpu = (yaml.safe_load((REPO_ROOT / "configs/accelerate" / f"{n}.yaml").read_text())
                for n in ("fsdp_cpu_2proc", "fsdp_4gpu"))
    assert cpu["distributed_type"] == gpu["distributed_type"] == "FSDP" and cpu["fsdp_config"] == gpu["fsdp_config"]
    assert cpu["num_processes"] == 2 and cpu["mixed_precision"] == "no"


@pytest.mark.slow
def test_fsdp_two_cpu_processes_save_a_student_that_loads_and_scores(tiny_brd, tmp_path):
    """configs/accelerate/fsdp_cpu_2proc.yaml (fsdp_4gpu.yaml's FSDP2 settings, SHARDED_STATE_DICT checkpoints)
    after --pack-only: both ranks read the packed cache, shard, and the final save is a full, loadable model."""
    from brdlib.scoring import score_candidates

    cfg = tiny_brd
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base = ["tiny", f"output_root={tmp_path}", "recipes.brd.max_steps=4", "train.save_steps=2", "--variant", "brd"]
    packed = subprocess.run([sys.executable, "-m", "brdlib.cli", "train", *base, "--pack-only"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert packed.returncode == 0, packed.stderr[-2000:]
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
           str(REPO_ROOT / "configs/accelerate/fsdp_cpu_2proc.yaml"), "-m", "brdlib.cli", "train", *base,
           "--name", "fsdp"]
    run = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("reusing packed blocks") == 2 and "packing into blocks" not in run.stderr
    assert "pytorch_model_fsdp_0" in run.stderr  # accelerate wrote sharded FSDP checkpoints
    summary = load_summary(cfg, "fsdp")
    assert summary["distributed_type"] == "FSDP" and summary["world_size"] == 2 and summary["steps"] == 4
    loaded = load_model(str(student_dir(cfg, "fsdp")))
    scores = score_candidates(loaded.model, loaded.tokenizer, [("The capital of France is", [" Paris", " Rome"])])
    assert len(scores[0]) == 2 and all(math.isfinite(s.sum_logprob) and s.n_tokens > 0 for s in scores[0])
    single = train_student(cfg, "brd", "single", progress=False)
    _assert_same_weights(student_dir(cfg, "fsdp"), single, atol=1e-5)


def test_xglm_with_gradient_checkpointing_trains_as_without(tiny_brd, tmp_path):
    """The paper's setting (paper.yaml: XGLM, chunked loss, gradient checkpointing) gives the same steps as without."""
    from transformers import XGLMConfig, XGLMForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    xglm = XGLMForCausalLM(XGLMConfig(vocab_size=len(tok), d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                                      max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    xglm.save_pretrained(tmp_path / "xglm")
    tok.save_pretrained(tmp_path / "xglm")
    summaries = []
    for flag in ("false", "true"):
        cfg = tiny_cfg(tmp_path, "train.loss=chunked", "train.loss_chunk_tokens=50",
                       f"train.gradient_checkpointing={flag}")
        train_student(cfg, "brd", f"xglm_{flag}", init=str(tmp_path / "xglm"), max_steps=2, progress=False)
        summaries.append(load_summary(cfg, f"xglm_{flag}"))
    assert [s["gradient_checkpointing"] for s in summaries] == [False, True]
    assert [h["loss"] for h in summaries[0]["log_history"]] == pytest.approx(
        [h["loss"] for h in summaries[1]["log_history"]], abs=1e-6)
    _assert_same_weights(student_dir(tiny_brd, "xglm_false"), student_dir(tiny_brd, "xglm_true"), atol=1e-6)


def test_no_process_checks_the_saved_weights_after_the_main_one_moved_them(tmp_path, monkeypatch):
    """run_and_save: under DDP the main process moves ``.<name>.tmp`` into place as soon as run_and_save returns; a
    slower process that looked for the weights after that found none ("no model weights were written", ~1 run in 4
    of test_ddp_two_cpu_processes_trains_the_same_model). Every process must have looked before anyone returns."""
    import types

    import brdlib.train as train_module

    events: list[str] = []

    class State:
        is_main_process = False

        def wait_for_everyone(self) -> None:
            events.append("barrier")

    class Trainer:
        def train(self, resume_from_checkpoint=None):
            return "result"

        def save_model(self, folder):
            events.append("save")
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "model.safetensors").write_bytes(b"")

    def looked(folder):
        events.append("check")
        return True

    monkeypatch.setattr(train_module, "has_weights", looked)
    model = types.SimpleNamespace(config=types.SimpleNamespace(use_cache=False))
    out = run_and_save(Trainer(), State(), model, tmp_path / "student", None)
    assert out[0] == "result" and out[2] == tmp_path / ".student.tmp"
    assert events[events.index("check"):] == ["check", "barrier"]
