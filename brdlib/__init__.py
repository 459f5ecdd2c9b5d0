"""brdlib: the library behind the Basic Reading Distillation reproduction's notebooks.

One module per job, on floors that import only downward (README "Layout"; ``tests/test_structure.py`` checks it):

0. records and config: ``records`` (the record types, KD kinds, shard parsing), ``specs`` (model specs, the
   embedded-model registry), ``config`` (the typed profile);
1. store: ``store`` (every path under ``data/<profile>/``, atomic writes, ``resolve_model``, ``ensure``),
   ``report`` (tables, figures, the paper's numbers), ``results`` (tidy long-form results);
2. resources: ``embedded``, ``models``, ``corpus``, ``tasks``, ``bigbench``, ``prompts`` (the paper's templates,
   verbatim), ``backends``, ``harness`` (the Table 9 tasks as an lm-evaluation-harness group);
3. stages: ``teacher``, ``assemble``, ``packing``, ``train`` (and ``kd``'s loss), ``scoring``, ``evaluate``;
4. studies: ``blind``, ``protocols``, ``cross_entropy``, ``probing``, ``data_size``, ``paper_tables``, ``plan`` (the
   cost of a profile before any run);
5. commands: ``cli`` (every command), ``runner`` (the notebooks, in order).

Importing ``brdlib`` imports none of them; notebooks import the modules they use (``from brdlib import blind``).
"""

__version__ = "0.1.0"

__all__ = [
    "records", "specs", "config",
    "store", "report", "results",
    "embedded", "models", "corpus", "tasks", "bigbench", "prompts", "backends", "harness",
    "teacher", "teacher_ray", "assemble", "packing", "train", "kd", "scoring", "evaluate",
    "blind", "protocols", "cross_entropy", "probing", "data_size", "paper_tables", "plan",
    "cli", "runner",
]
