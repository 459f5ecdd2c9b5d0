import subprocess
import sys

import pytest
import torch

from brdlib.config import load_config
from brdlib.models import (
    check_models,
    describe,
    generate_text,
    load_model,
    load_ref,
    materialize,
    resolve_spec,
    tiny_arch_tokenizer,
    tiny_tokenizer,
)
from brdlib.specs import TINY_ARCH_VERSION, classify_spec, embedded_name, validate_spec
from brdlib.store import StoreError


@pytest.mark.parametrize(
    "spec, kind, source",
    [
        ("tiny-random", "tiny-random", "0"),
        ("tiny-random:7", "tiny-random", "7"),
        ("smollm2-135m-instruct", "embedded", "smollm2-135m-instruct"),
        ("facebook/xglm-564M", "hub", "facebook/xglm-564M"),
        ("lmsys/vicuna-13b-v1.5", "hub", "lmsys/vicuna-13b-v1.5"),
    ],
)
def test_resolve_spec(spec, kind, source):
    r = resolve_spec(spec)
    assert (r.kind, r.source) == (kind, source)


def test_local_directory_spec(tmp_path):
    assert resolve_spec(str(tmp_path)).kind == "local"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_spec(str(tmp_path / "missing"))


@pytest.mark.parametrize("bad", ["smollm2", "tiny-random:x", "a/b/c", "", "tiny-random-bert", "tiny-random-xglm:x"])
def test_unknown_specs_list_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="accepted"):
        resolve_spec(bad)


def test_embedded_name():
    assert embedded_name("gemma-3-270m") == "gemma-3-270m"
    assert embedded_name("tiny-random") is None


def test_tiny_tokenizer_round_trips_any_text():
    tok = tiny_tokenizer()
    text = "Zürich, 3.5 km — «quoted» 東京"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.eos_token_id == tok.pad_token_id


def test_tiny_random_is_seeded():
    a, b, c = load_model("tiny-random:0"), load_model("tiny-random:0"), load_model("tiny-random:1")
    wa, wb, wc = (next(m.model.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert generate_text(a, "Paris is") == generate_text(b, "Paris is")


def test_tiny_random_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-random:5")
    assert torch.equal(torch.rand(3), expected)


def test_load_model_dtype_and_device():
    m = load_model("tiny-random", dtype="bfloat16")
    assert (m.dtype, m.device, m.kind) == ("bfloat16", "cpu", "tiny-random")
    assert not m.model.training
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        load_model("tiny-random", dtype="fp8")


def test_generate_and_describe():
    m = load_model("tiny-random")
    text = generate_text(m, "The capital of France is", max_new_tokens=5)
    assert isinstance(text, str) and text
    row = describe(m, "student", "Hello", max_new_tokens=3)
    assert row["params_M"] == pytest.approx(m.n_params / 1e6, abs=1e-3)
    assert {"role", "spec", "dtype", "device", "generated", "vocab"} <= row.keys()


def test_load_ref_and_check_models():
    cfg = load_config("tiny")
    assert load_ref(cfg, "teacher").spec == "tiny-random:1"
    with pytest.raises(StoreError, match=r"'oracle' is not a role of profile 'tiny' \(teacher, student\), not a "
                       r"trained student \(none yet\) and not a model spec"):
        load_ref(cfg, "oracle")
    table = check_models(cfg, "Hello", max_new_tokens=3)
    assert list(table["role"]) == ["teacher", "student"]
    assert list(table["paper_model"]) == ["lmsys/vicuna-13b-v1.5", "facebook/xglm-564M"]
    assert (table["params_M"] > 0).all()


@pytest.mark.parametrize("arch", ["xglm", "llama", "gpt2"])
def test_tiny_arch_specs_classify_without_building(arch, tmp_cache):
    spec = classify_spec(f" tiny-random-{arch}:4 ")
    assert (spec.spec, spec.kind) == (f"tiny-random-{arch}:4", "tiny-arch")
    assert spec.source == str(tmp_cache / "tiny-models" / f"{arch}-seed4-v{TINY_ARCH_VERSION}")
    assert classify_spec(f"tiny-random-{arch}").source.endswith(f"{arch}-seed0-v{TINY_ARCH_VERSION}")
    assert validate_spec(f"tiny-random-{arch}:4") == f"tiny-random-{arch}:4" and embedded_name(spec.spec) is None
    assert not (tmp_cache / "tiny-models").exists()


def test_unknown_tiny_arch_lists_the_architectures():
    with pytest.raises(ValueError, match="'tiny-random-<arch>\\[:<seed>\\]' with arch one of xglm, llama, gpt2"):
        resolve_spec("tiny-random-bert")
    with pytest.raises(ValueError, match="accepted: xglm, llama, gpt2"):
        tiny_arch_tokenizer("bert")


def test_materialize_refuses_real_models(tmp_path):
    with pytest.raises(ValueError, match="tiny random models only; 'facebook/xglm-564M' is a hub model"):
        materialize("facebook/xglm-564M", tmp_path)
    folder = materialize("tiny-random:3", tmp_path / "t")
    assert load_model(str(folder)).tokenizer("a b")["input_ids"] == tiny_tokenizer()("a b")["input_ids"]


MMAP_PROBE = """
import ctypes, sys, threading
from brdlib.models import mmap_threshold

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
freed = []


def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


def touch(p, n):
    ctypes.memset(p, 1, n)
    return p


def work():  # in a thread of its own, as torch's workers allocate: glibc gives it an arena of its own
    libc.free(touch(libc.malloc(16 << 20), 16 << 20))  # glibc now serves blocks under 16 MiB from its heap
    blocks, keepers = [], []
    for _ in range(200):  # 1 MiB blocks, each followed by a small live one: freed, the heap cannot shrink
        blocks.append(touch(libc.malloc(1 << 20), 1 << 20))
        keepers.append(libc.malloc(64))
    before = rss_mb()
    for b in blocks:
        libc.free(b)
    freed.append(round(before - rss_mb()))


with mmap_threshold(int(sys.argv[1]) if sys.argv[1] != "none" else None):
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
print(freed[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_mmap_threshold_returns_freed_blocks_to_the_system():
    """Under :func:`mmap_threshold`, 200 freed 1 MiB blocks of a worker thread leave the process at once; under glibc's
    own rule they stay in the thread's heap (the training peak of the 0.5B students is lower by such memory)."""
    def freed(arg: str) -> int:
        out = subprocess.run([sys.executable, "-c", MMAP_PROBE, arg], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    assert freed("256") >= 190
    assert freed("none") <= 20


def test_load_model_weights_are_resident_not_mapped_from_the_file(tmp_path):
    """On CPU the weights are read through the file mapping and copied out (make_weights_resident): pages of a
    mapped file that the kernel reclaims would be read from disk again at every forward pass."""
    from safetensors.torch import load_file

    from brdlib.models import _file_mapped_ranges, _in_ranges

    folder = materialize("tiny-random:3", tmp_path / "m")
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    mapped = _file_mapped_ranges()
    params = dict(loaded.model.named_parameters())
    assert not [n for n, p in params.items() if _in_ranges(p.data_ptr(), mapped)]
    saved = load_file(folder / "model.safetensors")
    assert all(torch.equal(params[n], t) for n, t in saved.items() if n in params)


def test_plain_from_pretrained_maps_the_file_so_the_check_above_can_fail(tmp_path):
    from transformers import AutoModelForCausalLM

    from brdlib.models import _file_mapped_ranges, _in_ranges

    folder = materialize("tiny-random:3", tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    mapped = _file_mapped_ranges()
    assert any(_in_ranges(p.data_ptr(), mapped) for p in model.parameters())


def test_pretrained_tokenizer_is_built_once_per_tokenizer_files(tmp_path):
    import shutil

    from brdlib.models import pretrained_tokenizer

    a = materialize("tiny-random-gpt2:0", tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "model.safetensors").unlink()  # weights and other files do not matter
    assert pretrained_tokenizer(str(a)) is pretrained_tokenizer(str(b))
    c = materialize("tiny-random-llama:0", tmp_path / "c")
    assert pretrained_tokenizer(str(c)) is not pretrained_tokenizer(str(a))
    assert pretrained_tokenizer(str(a)).pad_token is not None


FREE_MEMORY_PROBE = """
import gc, weakref
from brdlib.models import build_tiny_random, free_memory

class Cycle:
    pass

model, _ = build_tiny_random(0)
alive = weakref.ref(model)
gc.disable()  # only free_memory collects
del model
assert alive() is None, "a dropped model is freed by reference counting"
free_memory()
assert gc.get_freeze_count() > 0
made_after = Cycle()
made_after.me = made_after
after = weakref.ref(made_after)
del made_after
free_memory()
assert after() is None, "a cycle made after the freeze is collected"
print("ok")
"""


def test_free_memory_freezes_survivors_and_still_collects_what_is_made_after():
    out = subprocess.run([sys.executable, "-c", FREE_MEMORY_PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
