"""Typed study profiles: ``configs/<name>.yaml`` loaded, overridden and validated in one place.

    brd-config smoke recipes.brd.max_steps=10        # print the resolved profile
    from brdlib.config import load_config
    cfg = load_config("tiny", ["recipes.brd.max_steps=3", "seed=1"])
    cfg.recipe("further")                            # the train section with the FURTHER student's recipe applied

Every key is checked at load time: an unknown key, or a value of the wrong type, fails with a
message that names it and lists what is accepted there.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from brdlib.records import KD_KINDS, parse_shard
from brdlib.specs import validate_spec

__all__ = [
    "CONFIG_DIR", "DATA_DIR_ENV", "EXTENDS_KEY", "FIXTURE_MIRROR_DIR", "RECIPE_OVERRIDES", "RECIPES", "REPO_ROOT",
    "AnalysisConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "KDConfig", "ModelsConfig",
    "PassagesConfig", "ProtocolsConfig", "RecipeConfig", "RecipesConfig", "TeacherConfig", "TeacherRayConfig",
    "TrainConfig", "TrainRecipe", "available_profiles", "cpu_has_native_bf16", "load_config", "merge_profiles",
    "parse_overrides", "raw_profile", "read_profile_file",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
FIXTURE_MIRROR_DIR = REPO_ROOT / "tests" / "fixtures" / "mirror"
"""A few hand-written rows per file in the offline mirror's layout and formats (data.source: fixture)."""
DATA_DIR_ENV = "BRD_DATA_DIR"
"""Environment variable pointing at an offline data mirror (the layout of ``../shared/data``)."""


class ConfigError(ValueError):
    """A profile that cannot be loaded: unknown name or key, or a value of the wrong type."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelsConfig(_Strict):
    """Model specs: a hub id, a local directory, an embedded model name, or ``tiny-random[:seed]``."""

    teacher: str = Field(description="model that produces the basic-reading behaviours")
    student: str = Field(description="small model continued-pretrained on BRD passages")
    extra: dict[str, str] = Field(
        default_factory=dict,
        description="further models by role (second teacher, large baseline, KD checkpoints)",
    )

    @field_validator("teacher", "student")
    @classmethod
    def _spec_known(cls, value: str) -> str:
        return validate_spec(value)

    @field_validator("extra")
    @classmethod
    def _extra_known(cls, value: dict[str, str]) -> dict[str, str]:
        return {role: validate_spec(spec) for role, spec in value.items()}

    def roles(self) -> dict[str, str]:
        """All models by role, teacher and student first."""
        return {"teacher": self.teacher, "student": self.student, **self.extra}


class DataConfig(_Strict):
    """Where the text and the tasks come from, and how much of them a profile uses."""

    source: Literal["hub", "mirror", "fixture"] = Field(
        description="'hub' loads from the Hugging Face hub; 'mirror' reads an offline mirror in place; "
        "'fixture' reads the hand-written rows of tests/fixtures/mirror (tiny: runs with or without a mirror)"
    )
    mirror_dir: Path | None = Field(
        default=None,
        description=f"offline mirror; default: ${DATA_DIR_ENV}, else ../shared/data beside the repository",
    )
    hub_fixture_dir: Path | None = Field(
        default=None,
        description="source='hub' only: read the hub datasets, CC-100 and the BIG-bench sdist's tasks from small "
        "local copies in their exact formats under this folder (tests/fixtures/hub: the rehearsal profile), "
        "through the same loading code; relative paths are read from the repository root",
    )
    corpus: Literal["cc100", "c4", "wikitext2", "brown", "abc", "webtext", "state_union", "text_file"] = Field(
        description="general corpus; cc100 is the paper's, the others are offline stand-ins"
    )
    corpus_file: Path | None = Field(default=None, description="plain-text corpus when corpus='text_file'")
    n_sentences: int = Field(gt=0, description="sentences taken from the corpus (paper: 5M)")
    sentences_per_passage: int = Field(gt=0, description="consecutive sentences grouped into one passage")
    tasks: list[str] = Field(min_length=1, description="downstream tasks evaluated")
    max_examples_per_task: int | None = Field(
        default=None, gt=0, description="stratified subsample per task; null for the full split"
    )
    max_bigbench_tasks: int | None = Field(default=None, gt=0, description="BIG-bench tasks used; null for all")
    bigbench_exclude: list[str] = Field(
        default_factory=list, description="selected BIG-bench tasks left out before sampling (say why in the profile)"
    )
    # Corpus processing (brdlib.corpus) -------------------------------------------------------------
    cc100_url: str = Field(
        default="https://data.statmt.org/cc-100/en.txt.xz",
        description="CC-100 English, streamed (never downloaded whole); a local copy's path works too",
    )
    min_sentence_words: int = Field(default=4, gt=0, description="shorter sentences are dropped (counted)")
    max_sentence_words: int = Field(default=64, gt=0, description="longer sentences are dropped (counted)")
    shuffle_buffer_docs: int = Field(
        default=10_000, gt=0, description="documents in the seeded shuffle buffer of the streamed corpus"
    )
    # Tasks (brdlib.tasks, brdlib.bigbench) ------------------------------------------------------------
    pawsx_eval_split: Literal["test", "dev"] = Field(
        default="test",
        description="PAWS-X-en evaluation split: 'test' (mirror: labels derived from de/zh, see MANIFEST) "
        "or 'dev' (exact labels); train/tune are carved from the other one where no train split exists",
    )
    split_seed: int = Field(
        default=0, description="fixed seed for carving train/tune splits and for subsampling examples"
    )
    tune_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="share carved for tune (and for a held-out test where one is carved); A.3 uses 10%",
    )
    bigbench_dir: Path | None = Field(
        default=None,
        description="BIG-bench benchmark_tasks folder for source='hub'; default: the bigbench sdist, "
        "fetched once with pip into the brd cache",
    )
    bigbench_format: Literal["bigbench", "prefix_input"] = Field(
        default="bigbench",
        description="'bigbench': BIG-bench's own zero-shot format (task prefix, input prefix, input, "
        "choices where the task asks, output prefix); 'prefix_input': task prefix + input only",
    )

    @field_validator("tasks")
    @classmethod
    def _tasks_known(cls, value: list[str]) -> list[str]:
        known = ("xnli", "rte", "cb", "pawsx", "boolq", "sst2", "bigbench")
        for name in value:
            if name not in known and not (name.startswith("bigbench:") and len(name) > len("bigbench:")):
                raise ValueError(
                    f"unknown task {name!r}; accepted: {', '.join(known)}, bigbench:<task>[:<subtask>]"
                )
        return value

    @model_validator(mode="after")
    def _corpus_file_needed(self) -> DataConfig:
        if self.corpus == "text_file" and self.corpus_file is None:
            raise ValueError("data.corpus='text_file' needs data.corpus_file (a path to a plain-text corpus)")
        if self.hub_fixture_dir is not None and self.source != "hub":
            raise ValueError(f"data.hub_fixture_dir stands in for the hub, so it needs data.source='hub' "
                             f"(got source={self.source!r}); source 'fixture' reads tests/fixtures/mirror instead")
        if self.min_sentence_words > self.max_sentence_words:
            raise ValueError(
                f"data.min_sentence_words ({self.min_sentence_words}) exceeds "
                f"data.max_sentence_words ({self.max_sentence_words})"
            )
        return self

    def resolved_data_dir(self) -> Path | None:
        """Where offline data is read: the fixture mirror, the mirror in force, or None for the hub."""
        if self.source == "fixture":
            return FIXTURE_MIRROR_DIR
        return self.resolved_mirror_dir() if self.source == "mirror" else None

    def resolved_hub_fixture_dir(self) -> Path | None:
        """The hub fixtures in force (``hub_fixture_dir``, a relative path read from the repository root), or None."""
        if self.hub_fixture_dir is None:
            return None
        path = Path(self.hub_fixture_dir).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path

    def resolved_mirror_dir(self) -> Path | None:
        """The mirror directory in force: this key, else ``$BRD_DATA_DIR``, else ``../shared/data``.

        A relative ``mirror_dir`` is read from the repository root, wherever the process runs (notebooks run
        in notebooks/).
        """
        if self.mirror_dir is not None:
            path = Path(self.mirror_dir).expanduser()
            return path if path.is_absolute() else REPO_ROOT / path
        env = os.environ.get(DATA_DIR_ENV)
        if env:
            return Path(env).expanduser()
        default = REPO_ROOT.parent / "shared" / "data"
        return default if default.is_dir() else None


class TeacherRayConfig(_Strict):
    """``teacher.engine: ray``: the teacher on a Ray cluster (brdlib.teacher_ray). vLLM models run through
    ``ray.data.llm``; GGUF (llama.cpp) and transformers models through a pool of Ray actors."""

    address: str | None = Field(
        default=None, description="cluster to join (ray.init(address=...)): 'auto' or 'ray://head:10001'; null: start "
        "a local cluster on this machine",
    )
    workers: int = Field(
        default=1, gt=0, description="engine replicas (data parallel): one per GPU group or CPU worker",
    )
    cpus_per_worker: int = Field(default=1, gt=0, description="CPU threads of each replica (llama.cpp threads)")
    tensor_parallel_size: int = Field(default=1, gt=0, description="vllm: GPUs per replica (tensor parallel)")
    batch_size: int | None = Field(
        default=None, gt=0, description="vllm: rows per engine call of ray.data.llm; null: teacher.batch_size",
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="vllm: share of each GPU a replica takes; null: "
        "teacher.vllm_gpu_memory_utilization",
    )
    shard_batches: int = Field(
        default=8, gt=0, description="teacher batches per shard: a shard is written atomically once all of it is "
        "generated, and a rerun after a kill generates only the shards not on disk",
    )


class TeacherConfig(_Strict):
    """Decoding of the teacher's behaviours (the paper does not state it; greedy is our reading)."""

    engine: Literal["local", "ray"] = Field(
        default="local", description="local: this process (teacher.shard=i/N splits machines by hand); ray: a Ray "
        "cluster (teacher.ray), one command for every GPU and machine",
    )
    ray: TeacherRayConfig = Field(default_factory=TeacherRayConfig)

    backend: Literal["auto", "transformers", "vllm", "llamacpp"] = Field(
        default="auto",
        description="auto: vllm on CUDA, llama.cpp on CPU for GGUF models (if installed), else transformers",
    )
    max_new_tokens: int = Field(default=128, gt=0)
    batch_size: int = Field(default=16, gt=0, description="prompts per batch: one generation call, its records written "
                            "together")
    greedy: bool = True
    temperature: float = Field(default=1.0, gt=0, description="sampling temperature, only when greedy is false")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling, only when greedy is false")
    behaviours: list[Literal["ner", "qra"]] = Field(
        default_factory=lambda: ["ner", "qra"], min_length=1, description="Table 1 (ner) and Table 2 (qra) prompts"
    )
    shard: str = Field(default="0/1", description="i/N: this machine takes the passages whose id hashes to i mod N")
    prefix_cache: bool = Field(default=True, description="transformers: run the shared few-shot prefix once")
    llamacpp_threads: int | None = Field(default=None, gt=0, description="llama.cpp CPU threads; null: all cores")
    llamacpp_slots: int | None = Field(
        default=None, gt=0,
        description="llama.cpp: sequences decoded together (parallel slots); null: batch_size. A batch of more prompts "
        "than slots keeps every slot busy: a slot that finishes takes the batch's next prompt",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1,
        description="vllm: share of the GPU's memory the engine takes (weights + KV cache); vLLM refuses to start "
        "when less is free, so leave room for what else holds the GPU",
    )
    vllm_max_in_flight: int = Field(
        default=4096, gt=0,
        description="vllm: requests held by the engine at once (a stream; batch_size is then the records written "
        "per checkpoint)",
    )
    vllm_child_process: bool = Field(
        default=True, description="vllm: run the engine in a child process, so its GPU memory is returned when done"
    )
    vllm_cpu_kv_cache_gib: int = Field(default=4, gt=0, description="vllm's CPU build: GiB of RAM for the KV cache")
    vllm_python: Path | None = Field(
        default=None,
        description="vllm: the Python interpreter of the engine's child process, for vLLM in an environment of its "
        "own (its pins can clash with the project's: scripts/ensure_vllm_env.sh makes .venv-vllm); null: this one",
    )
    vllm_enforce_eager: bool | None = Field(
        default=None, description="vllm: skip torch.compile/CUDA graphs; null: eager on CPU, compiled on CUDA"
    )

    @field_validator("shard")
    @classmethod
    def _shard_form(cls, value: str) -> str:
        i, n = parse_shard(value)
        return f"{i}/{n}"


class PassagesConfig(_Strict):
    """Assembly of the BRD passages (brdlib.assemble, §3.2); the paper leaves ``<sep>`` open."""

    sep: str = Field(
        default=" <sep> ",
        min_length=1,
        description="exact string put between a passage's parts (s1 <sep> NER(s1) <sep> s2 ...); "
        "'eos' puts the student tokenizer's eos token there instead",
    )
    size_fractions: list[float] = Field(
        default_factory=lambda: [0.1, 0.25, 0.5, 1.0],
        min_length=1,
        description="nested shares of the source passages for the data-size curve (Fig. 2); "
        "each is a variant brd_frac<f>",
    )

    @field_validator("size_fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not 0 < f <= 1]
        if bad:
            raise ValueError(f"passages.size_fractions must lie in (0, 1]; got {bad}")
        return sorted(set(value))


class TrainConfig(_Strict):
    """What every student's training shares; defaults are the paper's (A.1). How long each student trains, and the
    keys some students change, are its recipe's (``recipes``, :meth:`Config.recipe`)."""

    learning_rate: float = Field(default=3e-4, gt=0)
    batch_size: int = Field(
        default=8, gt=0, description="global batch (blocks per optimizer step) over all processes"
    )
    max_length: int = Field(default=2048, gt=0, description="tokens per packed block")
    save_steps: int = Field(default=1_000, gt=0)
    save_total_limit: int | None = Field(default=2, gt=0, description="checkpoints kept; null keeps all")
    keep_checkpoints: bool = Field(
        default=False, description="keep the checkpoints once the student is saved (the paper saved every 1000 steps); "
        "the last step's is never written: the student folder holds its weights"
    )
    logging_steps: int = Field(default=10, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="not stated in the paper; linear decay is the Trainer's default"
    )
    weight_decay: float = Field(default=0.0, ge=0)
    optim: str = Field(default="adamw_torch", description="the Trainer's optimizer (TrainingArguments.optim), or "
                       "adafactor_torch (torch.optim.Adafactor, one parameter at a time); the paper does not name "
                       "it: AdamW, the Trainer's default")
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    gradient_checkpointing: bool = False
    mmap_threshold_kib: int | None = Field(
        default=None, gt=0, description="while training, glibc maps every allocation of this many KiB or more, so "
        "freed activations and gradients return to the system at once (a lower peak; brdlib.models.mmap_threshold); "
        "null: glibc's own rule",
    )
    loss: Literal["auto", "standard", "chunked"] = Field(
        default="auto",
        description="'chunked' computes the cross-entropy in chunks of tokens without materialising the "
        "logits; 'auto' chunks when the vocabulary has at least chunked_loss_min_vocab entries",
    )
    chunked_loss_min_vocab: int = Field(default=100_000, gt=0)
    loss_chunk_tokens: int = Field(default=1024, gt=0, description="tokens per chunk of the chunked loss")
    pack_batch_passages: int = Field(
        default=2_000, gt=0, description="passages packed together; only the last block of each group is padded"
    )
    ddp_timeout: int = Field(
        default=1800, gt=0,
        description="seconds a process waits at a collective (the process group's and TrainingArguments' "
        "ddp_timeout); pack first (brd train PROFILE --pack-only) so no rank waits on packing",
    )


class EvalConfig(_Strict):
    """brdlib.evaluate (notebooks 04-06): how task examples are scored and reported."""

    rule: Literal["mean", "sum"] = Field(default="mean", description="candidate choice: mean (paper §3.3) or sum")
    batch_size: int = Field(default=8, gt=0, description="examples per scoring batch (their candidates ride along)")
    bootstrap_samples: int = Field(default=1000, gt=0, description="resamples for each accuracy's interval")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="level of the bootstrap interval")
    large_model_max_examples: int | None = Field(
        default=None, gt=0, description="examples per task for models of large_model_min_params or more (null: all)"
    )
    large_model_min_params: int = Field(
        default=1_000_000_000, gt=0, description="parameter count from which large_model_max_examples applies"
    )
    special_tokens: Literal["tokenizer", "none"] = Field(
        default="tokenizer",
        description="start tokens of scored, Table 5 and probed text: the tokenizer's own, as training reads text "
        "(XGLM '</s>', Llama '<s>'), or none (Gemma: BOS; lm-eval <= 0.4.9)",
    )
    max_length: int | None = Field(
        default=None, gt=0, description="most input tokens when scoring, below each model's own positions "
        "(contexts are cut from the left, as lm-eval does); null: the model's positions",
    )
    tie_break: Literal["random", "first"] = Field(
        default="random", description="equal scores: a candidate chosen by a hash of (seed, task, example id) "
        "among the tied ones, or the first of them",
    )


class ProtocolsConfig(_Strict):
    """Students trained beyond BRD and FURTHER: ablations, relaxed and supervised protocols (notebooks 04-06, 09)."""

    task_train_examples: int | None = Field(
        default=None, gt=0, description="training inputs per task for the relaxed/supervised protocols; null: all"
    )
    relaxed_tasks: list[str] | None = Field(
        default=None,
        description="tasks of the relaxed/supervised protocols ('bigbench': A.3's reduced set); null: the Table 9 "
        "tasks of data.tasks with the reduced BIG-bench set",
    )
    teacher_sentences_per_input: int | None = Field(
        default=None, gt=0,
        description="sentences of each task input the teacher annotates for BRD2 (one field's first sentence, "
        "then the next field's, ...); the rest stay in the passage unannotated; null: all",
    )
    eval_max_examples: int | None = Field(
        default=None, gt=0, description="held-out examples per task scored (stratified); null: all that the data gives"
    )
    tune_max_examples: int | None = Field(
        default=None, gt=0, description="tune examples per task for checkpoint selection (stratified); null: all"
    )
    checkpoint_candidates: int = Field(
        default=2, gt=0,
        description="evenly spaced checkpoints (the final model included) compared on the tune split; 1: final only",
    )
    second_teacher_sentences: int | None = Field(
        default=None, gt=0, description="corpus sentences annotated by the second teacher (Table 6); null: all"
    )


class KDConfig(_Strict):
    """brdlib.kd: token-level KD baselines (Table 4) on a teacher and student that share a vocabulary; how long
    and at what shape the KD students train is ``recipes.kd``'s (their '+BRD': ``recipes.kd_brd``)."""

    teacher: str = Field(default="teacher", description="role (or model spec) of the KD teacher")
    student: str = Field(default="student", description="role (or model spec) of the KD student")
    temperature: float = Field(default=1.0, gt=0, description="softmax temperature of both distributions (loss x T^2)")
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="dtype of the frozen teacher; auto: the profile's (float32 on CPU)"
    )
    teacher_logits: Literal["online", "precomputed"] = Field(
        default="online",
        description="online: the teacher runs beside the student at every step (both in memory); precomputed: the "
        "teacher reads the blocks the students train on once and is freed before they load, its logits kept "
        "(blocks x length x vocabulary x 2 bytes: small runs only) so the peak holds one model, not both",
    )
    released: dict[str, str] | None = Field(
        default=None,
        description="kind -> released checkpoint (hub id or directory) for both KD kinds (skd, minillm); "
        "set, nothing is trained (paper: Gu et al.'s GPT-2 760M students)",
    )

    @field_validator("released")
    @classmethod
    def _released_kinds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if set(value) != set(KD_KINDS):
            raise ValueError(f"kd.released must name exactly the KD kinds {', '.join(KD_KINDS)}; got {sorted(value)}")
        return {kind: validate_spec(spec) for kind, spec in value.items()}


class AnalysisConfig(_Strict):
    """brdlib.cross_entropy, brdlib.probing, brdlib.data_size (notebooks 07-09): Table 5, Figure 4, Figure 2."""

    cross_entropy_average: Literal["arithmetic", "geometric"] = Field(
        default="arithmetic", description="how each model's per-token probabilities become a sequence probability"
    )
    cross_entropy_max_examples: int | None = Field(
        default=1000, gt=0, description="random instances per BIG-bench task (paper: 1K); null: all"
    )
    cross_entropy_max_examples_main: int | None = Field(
        default=None, gt=0, description="instances per Table 9 task (XNLI ... SST-2); null: the whole test split "
        "(the paper's Table 5 sums over whole test sets)"
    )
    cross_entropy_text: Literal["instance", "candidates"] = Field(
        default="instance", description="'instance': the prompt with its gold answer, one text per example; "
        "'candidates': each candidate given the prompt, one text per candidate"
    )
    probing_max_train: int | None = Field(
        default=None, gt=0, description="training inputs per task for the probes (stratified); null: all"
    )
    probing_max_eval: int | None = Field(default=None, gt=0, description="tune and test inputs per task; null: all")
    probing_max_feature_gb: float | None = Field(
        default=8.0, gt=0, description="refuse a task whose probe inputs' hidden states (all splits, every layer, "
        "float32) exceed this for one model; null: no limit"
    )
    probing_tasks: list[str] | None = Field(
        default=None, description="Table 9 tasks probed; null: every Table 9 task of data.tasks"
    )
    probing_c_grid: list[float] = Field(
        default=[0.01, 0.1, 1.0, 10.0], min_length=1, description="inverse L2 strengths tried; chosen on tune"
    )
    data_size_steps: Literal["epochs", "fixed"] = Field(
        default="epochs", description="'epochs': each size trains recipes.brd.max_steps x its share of BRD tokens "
        "(as many passes as the brd student); 'fixed': every size trains recipes.ablation.max_steps"
    )
    data_size_fractions: list[float] | None = Field(
        default=None, description="shares of the passages on the Fig. 2 curve; null: passages.size_fractions"
    )
    data_size_max_examples: int | None = Field(
        default=None, gt=0, description="test examples per task for the Fig. 2 students; null: the profile's"
    )

    @field_validator("probing_c_grid")
    @classmethod
    def _c_positive(cls, value: list[float]) -> list[float]:
        if any(c <= 0 for c in value):
            raise ValueError(f"analysis.probing_c_grid values must be positive; got {value}")
        return sorted(set(value))

    @field_validator("data_size_fractions")
    @classmethod
    def _size_fractions(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        bad = [f for f in value if not 0 < f <= 1]
        if bad or not value:
            raise ValueError(f"analysis.data_size_fractions must be a non-empty list in (0, 1]; got {value}")
        return sorted(set(value))

RECIPES: dict[str, str] = {
    "brd": "the BRD student and the other passage variants of notebook 03 (§3.2, A.1)",
    "further": "the FURTHER student: the ORI passages (§4)",
    "ablation": "the ablation (Table 12/7), second-teacher (Table 6) and fixed-step data-size (Fig. 2) students",
    "task": "the protocol students: BRD2, FBRD, TaskDistillation (+BRD), SFT, BRD2-SFT (notebooks 05-06)",
    "kd": "the token-level KD students, SKD and MiniLLM (Table 3-4)",
    "kd_brd": "Table 4's '+BRD': each KD student continued on D_TRAIN",
}
"""The training recipes every profile states, by the name a caller passes to :meth:`Config.recipe`."""

RECIPE_OVERRIDES = ("batch_size", "max_length", "learning_rate", "optim", "gradient_checkpointing",
                    "mmap_threshold_kib")
"""The ``train`` keys a recipe may set for its students (null: the ``train`` section's value)."""


class RecipeConfig(_Strict):
    """How long one kind of student trains, and the ``train`` keys it changes (null: the ``train`` section's)."""

    description: str = ""
    max_steps: int = Field(gt=0, description="optimizer steps")
    batch_size: int | None = Field(default=None, gt=0, description="global batch (blocks/step); null: train's")
    max_length: int | None = Field(default=None, gt=0, description="tokens per packed block; null: train's")
    learning_rate: float | None = Field(default=None, gt=0, description="null: train's")
    optim: str | None = Field(default=None, description="TrainingArguments.optim or adafactor_torch; null: train's")
    gradient_checkpointing: bool | None = Field(default=None, description="null: train's")
    mmap_threshold_kib: int | None = Field(default=None, gt=0, description="null: train's")


class RecipesConfig(_Strict):
    """One recipe per kind of student (:data:`RECIPES`); every profile states all of them."""

    brd: RecipeConfig
    further: RecipeConfig
    ablation: RecipeConfig
    task: RecipeConfig
    kd: RecipeConfig
    kd_brd: RecipeConfig

    @model_validator(mode="before")
    @classmethod
    def _exactly_the_recipes(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            missing = [n for n in RECIPES if n not in value]
            unknown = [str(n) for n in value if n not in RECIPES]
            if missing or unknown:
                raise ValueError("recipes must name exactly " + ", ".join(RECIPES)
                                 + (f"; missing: {', '.join(missing)}" if missing else "")
                                 + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        return value


class TrainRecipe(TrainConfig):
    """The ``train`` section with one recipe applied (:meth:`Config.recipe`): what one student trains with."""

    recipe: str = Field(description="the recipe's name (a key of RECIPES)")
    max_steps: int = Field(gt=0)
    overridden: tuple[str, ...] = Field(default=(), description="the train keys the recipe set")

    def key(self, field: str) -> str:
        """The profile key ``field``'s value comes from: ``recipes.<name>.<field>`` or ``train.<field>``."""
        own = field == "max_steps" or field in self.overridden
        return f"recipes.{self.recipe}.{field}" if own else f"train.{field}"


class Config(_Strict):
    """One study profile: models, data, teacher decoding, training, outputs and hardware."""

    profile: str = Field(description="profile name, used in output paths and table captions")
    description: str = ""
    scale_note: str = Field(
        description="how to read this profile's numbers (tiny: meaningless; smoke: real but small-scale)"
    )
    seed: int = 0
    output_root: Path = Field(default=Path("."), description="root of data/, figures/ and runs/")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    models: ModelsConfig
    data: DataConfig
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    passages: PassagesConfig = Field(default_factory=PassagesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    recipes: RecipesConfig = Field(description="how long, and at what shape, each kind of student trains")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    protocols: ProtocolsConfig = Field(default_factory=ProtocolsConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    # Output locations -------------------------------------------------------------------------
    def _root(self) -> Path:
        root = Path(self.output_root).expanduser()
        return root if root.is_absolute() else REPO_ROOT / root

    @property
    def data_dir(self) -> Path:
        """Generated data and model artefacts of this profile (gitignored)."""
        return self._root() / "data" / self.profile

    @property
    def figures_dir(self) -> Path:
        """Tables (CSV, Markdown) and figures of this profile (committed for the default profile)."""
        return self._root() / "figures" / self.profile

    @property
    def runs_dir(self) -> Path:
        """Executed notebooks of this profile."""
        return self._root() / "runs" / self.profile

    # Hardware ---------------------------------------------------------------------------------
    def resolved_device(self) -> str:
        """'auto' picks cuda when present, then mps, else cpu."""
        if self.device != "auto":
            return self.device
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def resolved_dtype(self) -> str:
        """'auto' picks bfloat16 on a GPU that supports it, else float32. bfloat16 on a CPU (smoke) is for one that
        computes it natively (AVX512-BF16 or AMX): elsewhere it is emulated, slower than float32, and a warning
        says so."""
        if self.dtype == "bfloat16" and self.resolved_device() == "cpu" and not cpu_has_native_bf16():
            import warnings

            warnings.warn("dtype=bfloat16 on a CPU without AVX512-BF16/AMX runs emulated, slower than float32: "
                          "set dtype=float32", stacklevel=2)
        if self.dtype != "auto":
            return self.dtype
        if self.resolved_device() == "cuda":
            import torch

            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"

    def recipe(self, name: str, **update: Any) -> TrainRecipe:
        """The ``train`` section with recipe ``name``'s keys applied (its ``max_steps``; its other keys where set),
        then ``update`` (e.g. ``save_steps=...``); the one place a student's training settings are resolved."""
        if name not in RECIPES:
            raise ConfigError(f"unknown training recipe {name!r}; accepted: {', '.join(RECIPES)}")
        chosen = getattr(self.recipes, name)
        own = {key: getattr(chosen, key) for key in RECIPE_OVERRIDES if getattr(chosen, key) is not None}
        try:
            return TrainRecipe.model_validate({**self.train.model_dump(), **own, "max_steps": chosen.max_steps,
                                               "recipe": name, "overridden": tuple(own), **update})
        except ValidationError as err:
            raise ConfigError(_format_validation_error(err, f"recipe {name!r}")) from None

    def caption(self) -> str:
        """One line naming the profile, its models and data sizes, for every table and figure."""
        m = self.models
        bound = f"{self.eval.max_length} tokens" if self.eval.max_length else "each model's positions"
        return (
            f"profile={self.profile} ({self.scale_note}); teacher={m.teacher}; student={m.student}; "
            f"corpus={self.data.corpus} n_sentences={self.data.n_sentences}; "
            f"examples/task={self.data.max_examples_per_task or 'all'}; train steps={self.recipes.brd.max_steps}; "
            f"text read with special_tokens={self.eval.special_tokens}, left-truncated to {bound}, "
            f"ties={self.eval.tie_break}; dtype={self.dtype}"
        )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Loading ------------------------------------------------------------------------------------------


def available_profiles() -> list[str]:
    """Names of the profiles shipped in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve_profile_path(name_or_path: str | os.PathLike[str]) -> Path:
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.suffix in {".yaml", ".yml"} or os.sep in text:
        if not path.is_file():
            raise ConfigError(f"profile file {text!r} does not exist")
        return path
    candidate = CONFIG_DIR / f"{text}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown profile {text!r}; accepted: {', '.join(available_profiles())} or a path to a .yaml file"
        )
    return candidate


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | str | None) -> dict[str, Any]:
    """Turn ``["recipes.brd.max_steps=10", "seed=1"]`` (or a mapping, or one such string) into a dict.

    Values are parsed as YAML, so ``10`` is an int, ``3e-4`` a float, ``[a, b]`` a list, ``null`` None.
    """
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        overrides = [o for o in overrides.split() if o]
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. recipes.brd.max_steps=10)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        parsed[key] = _parse_scalar(raw)
    return parsed


def _parse_scalar(raw: str) -> Any:
    """YAML scalar, except that YAML 1.1's strings such as '3e-4' become floats."""
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _fields_of(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key in the raw dict, checking each level against the schema first."""
    parts = dotted.split(".")
    node: dict[str, Any] = raw
    schema: type[BaseModel] | None = Config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the profile"
        if schema is not None:
            accepted = _fields_of(schema)
            if part not in accepted:
                hint = difflib.get_close_matches(part, accepted, n=1)
                raise ConfigError(
                    f"unknown key {dotted!r}: {part!r} is not a key of {where}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; accepted: {', '.join(accepted)}"
                )
            annotation = schema.model_fields[part].annotation
            child = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        else:
            child = None  # free-form mapping such as models.extra
        if last:
            node[part] = value
            return
        if schema is not None and child is None and not _is_mapping_field(schema, part):
            raise ConfigError(f"key {dotted!r}: {'.'.join(parts[: depth + 1])!r} is a value, not a section")
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node, schema = nxt, child


def _is_mapping_field(schema: type[BaseModel], name: str) -> bool:
    return getattr(schema.model_fields[name].annotation, "__origin__", None) is dict


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid profile {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent = _schema_at(e["loc"][:-1])
            accepted = _fields_of(parent) if parent else []
            bad = str(e["loc"][-1])
            hint = difflib.get_close_matches(bad, accepted, n=1)
            msg = f"unknown key {loc!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            if accepted:
                msg += f"; accepted: {', '.join(accepted)}"
        else:
            msg = f"{loc}: {e['msg']} (got {e.get('input')!r})"
        lines.append("  - " + msg)
    return "\n".join(lines)


def _schema_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    schema: type[BaseModel] = Config
    for part in loc:
        if part not in schema.model_fields:
            return None
        annotation = schema.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        schema = annotation
    return schema


EXTENDS_KEY = "extends"
"""A profile key naming the profile it derives from (``extends: paper``): the base's keys, then the file's."""


def read_profile_file(path: Path) -> dict[str, Any]:
    """The mapping one profile file holds, as written (``extends`` unresolved, no defaults)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"profile {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"profile {path} must be a mapping of keys to values, got {type(raw).__name__}")
    return raw


def merge_profiles(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key; anything else (a list, a scalar, null) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_profiles(merged[key], value)
        else:
            merged[key] = value
    return merged


def raw_profile(name_or_path: str | os.PathLike[str], _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile's mapping with ``extends`` resolved, before validation; ``profile`` defaults to the file's stem.

    ``extends`` names a profile of ``configs/`` or a .yaml path (relative to the extending file); the base's own
    ``profile`` name is not inherited.
    """
    path = _resolve_profile_path(name_or_path).resolve()
    if path in _chain:
        cycle = " -> ".join(p.stem for p in (*_chain, path))
        raise ConfigError(f"profile {path}: '{EXTENDS_KEY}' makes a cycle ({cycle})")
    raw = read_profile_file(path)
    base = raw.pop(EXTENDS_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"profile {path}: '{EXTENDS_KEY}' must name a profile or a .yaml path, got {base!r}")
        target: str | Path = base.strip()
        if str(target).endswith((".yaml", ".yml")) or os.sep in str(target):
            target = path.parent / Path(target).expanduser()  # an absolute path stays as it is
        parent = raw_profile(target, (*_chain, path))
        parent.pop("profile", None)
        raw = merge_profiles(parent, raw)
    raw.setdefault("profile", path.stem)
    return raw


def load_config(
    name_or_path: str | os.PathLike[str] = "smoke",
    overrides: Sequence[str] | Mapping[str, Any] | str | None = None,
) -> Config:
    """Load a profile by name (``configs/<name>.yaml``) or path, apply ``key=value`` overrides, validate.

    A profile with ``extends: <base>`` is its base profile with the file's keys merged over it (:func:`raw_profile`).
    """
    path = _resolve_profile_path(name_or_path)
    raw = raw_profile(path)
    for key, value in parse_overrides(overrides).items():
        _apply_override(raw, key, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, str(path))) from None
