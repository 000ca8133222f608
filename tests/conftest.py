"""Test tiers: plain pytest = unit; `-m local` = kfp.local/torchrun on CPU; `-m gpu` = CUDA only."""

import gc
import os
import sys

import pytest

# Local S3/HTTP/Hub/KFP API servers as fixtures for every test module.
pytest_plugins = ("support.servers", "support.kfp_server")


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_collection_modifyitems(config, items):
    gpus = None
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        if gpus is None:
            gpus = _cuda_device_count()
        needed = marker.kwargs.get("count", 1)
        if gpus < needed:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA GPU(s), found {gpus}"))


def pytest_collection_finish(session):
    """Keeps what collection imported (torch, transformers, kfp: millions of objects that live
    until the end) out of the collector's full passes, which the code under test also starts
    (export_model's logit check, the trainer's heap freeze). Garbage made later is still freed."""
    gc.collect()
    gc.freeze()
    if os.environ.get("PYTEST_XDIST_WORKER") and "torch" in sys.modules:
        # One thread per worker: the workers share the cores (pytest-xdist starts one per core),
        # and more threads than cores make torch's OpenMP threads spin and wait on each other.
        sys.modules["torch"].set_num_threads(1)
