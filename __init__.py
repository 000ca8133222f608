"""kftune: Kubeflow Pipelines components that fine-tune LLMs with LoRA.

The Python API is imported on first use, so that `import kftune` stays light (no kfp, torch or
transformers):

- `kftune.run(...)`, `kftune.submit(...)`: the pipeline on this machine or on a KFP server
  (`pipelines/api.py`).
- `kftune.TrainingClient().train(...)` with `HuggingFaceModelParams`, `HuggingFaceDatasetParams`,
  `S3DatasetParams`, `HuggingFaceTrainerParams`: the Training Operator SDK's one-call fine-tuning,
  on kftune (`pipelines/training_client.py`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module (relative to this package) that defines it.
_LAZY = {
    "run": ".pipelines.api",
    "submit": ".pipelines.api",
    "RunSummary": ".pipelines.api",
    "SubmittedRun": ".pipelines.api",
    "TrainingClient": ".pipelines.training_client",
    "HuggingFaceModelParams": ".pipelines.training_client",
    "HuggingFaceDatasetParams": ".pipelines.training_client",
    "S3DatasetParams": ".pipelines.training_client",
    "HuggingFaceTrainerParams": ".pipelines.training_client",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kftune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
