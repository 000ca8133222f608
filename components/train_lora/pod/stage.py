"""Stage a job's inputs on this host, as a pod does: what the local backend starts for a job.

`python -m kftune.components.train_lora.pod.stage REQUEST` takes one JSON object (the arguments
of `entrypoint.stage_inputs`) and prints one JSON line: `{"model": dir, "data": dir}`, or
`{"problems": [...]}` for bad input, or `{"error": "..."}`; with the log records it wrote
(`"logs": [[logger, level, message], ...]`), which the caller logs as its own. The step side never
imports pod code: it starts this module, as it starts the trainer.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[list[object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append([record.name, record.levelno, record.getMessage()])


def main(argv: Sequence[str] | None = None) -> int:
    """Stages the inputs the JSON request names; prints the outcome as one JSON line."""
    from ...common.errors import InputError
    from .entrypoint import stage_inputs

    request = json.loads((sys.argv[1:] if argv is None else list(argv))[0])
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        model_dir, data_dir = stage_inputs(
            request["model_uri"], request["data_uri"], Path(request["stage_dir"]),
            wait_for_other_node=False, model_source=request.get("model_source"),
            data_source=request.get("data_source"))
        outcome: dict[str, object] = {"model": str(model_dir), "data": str(data_dir)}
    except InputError as error:
        outcome = {"problems": error.problems}
    except Exception as error:  # reported to the caller, which raises it as a failure
        outcome = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps({**outcome, "logs": records.records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
