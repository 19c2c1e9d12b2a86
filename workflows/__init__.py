"""What a run is: each workflow takes a data-only config, records a run, returns a result.

The run registry (:mod:`workflows.runs`) is where every result is recorded.
"""

from workflows.errors import (
    BadRegistryURL,
    RegistryError,
    RunInUse,
    RunNotFound,
    RunStateError,
)
from workflows.runs import Run, RunRegistry
from workflows.runs_info import code_version, file_sha256, new_run_id
from workflows.runs_model import MetricsTable, RunRecord

__all__ = [
    "BadRegistryURL",
    "MetricsTable",
    "RegistryError",
    "Run",
    "RunInUse",
    "RunNotFound",
    "RunRecord",
    "RunRegistry",
    "RunStateError",
    "code_version",
    "file_sha256",
    "new_run_id",
]
