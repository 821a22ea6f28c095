"""Orchestration: Ray (Train, tasks, Tune) and MLflow around the pure-PyTorch core.

Importing this package registers every stage (in dependency order) with `stage.STAGES`.
"""
from . import irp_stage, scorer_stage, allocator_stage, cell_stage, report_stage  # noqa: F401  (registration)
