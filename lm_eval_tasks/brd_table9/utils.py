"""The loader the task files name (`custom_dataset: !function utils.table9_dataset`): brd's own.

Written by `brd lm-eval-tasks` (brdlib/harness.py); run lm_eval from the project's environment, where brdlib is
installed. --metadata '{"brd_profile": "paper"}' reads the hub instead of the offline mirror ($BRD_DATA_DIR).
"""

try:
    from brdlib.harness import table9_dataset
except ImportError as err:  # lm_eval from another environment
    raise ImportError(f"the brd_table9 tasks read their data with brdlib ({err}); run lm_eval from the brd project's "
                      "environment (.venv/bin/lm_eval) or `pip install -e .` the project there") from None

__all__ = ["table9_dataset"]
