"""The environment for a torchrun started by a test: the caller's, minus what a parent run set."""

from __future__ import annotations

import os

# Set by an enclosing torchrun or by the Training Operator; a test sets its own.
_INHERITED_PREFIXES = ("PET_", "KFTUNE_DEBUG", "TORCHELASTIC")
_INHERITED_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without inherited rendezvous variables, with unbuffered output and `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_INHERITED_PREFIXES) and key not in _INHERITED_NAMES
    }
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env
