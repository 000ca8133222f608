"""The checked-in compiled components run: wired into a new pipeline and executed with kfp.local."""

import json
from pathlib import Path

import pytest
from kfp import dsl, local
from kfp.components import load_component_from_file

pytestmark = pytest.mark.local


def test_compiled_components_run_in_a_new_pipeline(tmp_path: Path) -> None:
    from kftune.components.common.demo import tiny_causal_lm

    model_dir = tiny_causal_lm(tmp_path / "tiny")
    data = tmp_path / "notes.jsonl"
    data.write_text("".join(json.dumps({"body": f"note number {n} is short."}) + "\n"
                            for n in range(60)))
    components = Path(__file__).resolve().parents[2] / "compiled" / "components"
    download_dataset = load_component_from_file(str(components / "download_dataset.yaml"))
    download_model = load_component_from_file(str(components / "download_model.yaml"))
    train_lora = load_component_from_file(str(components / "train_lora.yaml"))
    evaluate = load_component_from_file(str(components / "evaluate.yaml"))

    @dsl.pipeline(name="reuse-compiled")
    def reuse(dataset: str, model: str) -> dsl.Metrics:
        rows = download_dataset(uri=dataset, column_mapping={"text": "body"}, eval_fraction=0.2)
        base = download_model(uri=model, task="causal-lm")
        adapter = train_lora(model=base.outputs["model"], train_data=rows.outputs["train_data"],
                             task="causal-lm", backend="local",
                             training_parameters={"max_steps": 3, "save_strategy": "no"},
                             lora_config={"r": 4, "target_modules": "all-linear"})
        return evaluate(base_model=base.outputs["model"], adapter=adapter.outputs["adapter"],
                        eval_data=rows.outputs["eval_data"], task="causal-lm",
                        max_examples=8).outputs["metrics"]

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    task = reuse(dataset=str(data), model=str(model_dir))
    metrics = task.output.metadata
    assert metrics["base_perplexity"] > 1 and metrics["tuned_perplexity"] > 1
    assert metrics["eval_examples"] == 8
