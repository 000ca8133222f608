"""One training node: torchrun with the trainer, and why it failed written as a record.

    python -m kftune.components.train_lora.pod.node CONFIG.json

What the pod entrypoint does between staging and upload (`entrypoint.run_trainer`), on its own:
the local backend starts one per local "node", so that a failed node leaves the same record a
pod leaves in its termination message, in the file `KFTUNE_TERMINATION_MESSAGE_PATH` names.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .entrypoint import run_trainer


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the node of `CONFIG.json`; returns torchrun's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m kftune.components.train_lora.pod.node CONFIG.json",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    return run_trainer(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
