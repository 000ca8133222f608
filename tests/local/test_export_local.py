"""`kftune run --merge true --deploy true` on kfp.local: the demo adapter merged for real, and
checked; what deploy_model would serve shown without a cluster."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.local


def test_kftune_run_with_merge_exports_the_demo_model(kftune_demo_run) -> None:
    # The demo run that test_run_e2e checks, with --merge true --deploy true --serving-name
    # sentiment (tests/local/conftest.py): one run for both.
    completed, output_dir = kftune_demo_run
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    summary = json.loads((output_dir / "summary.json").read_text())
    merged = Path(summary["merged_model_dir"])
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["architecture"] == "BertForSequenceClassification"
    assert manifest["check"]["max_abs_error"] <= manifest["check"]["tolerance"]
    assert manifest["merged_from"]["adapter"]["replaced_tensors"] == [
        "classifier.bias", "classifier.weight"]
    # The evaluation's metrics travel into the merged model's manifest.
    assert manifest["merged_from"]["eval_metrics"]["tuned_accuracy"] == summary["tuned"][
        "accuracy"]
    assert f"merged     : {merged}" in completed.stdout
    # What register_model would record, shown without a registry.
    planned = {(entry["name"], entry["format"]): entry for entry in summary["would_register"]}
    assert sorted(planned) == [("kftune-lora", "peft-lora"), ("kftune-lora-merged", "huggingface")]
    assert planned[("kftune-lora-merged", "huggingface")]["uri"] == str(merged)
    assert planned[("kftune-lora", "peft-lora")]["metadata"]["eval_tuned_accuracy"] == summary[
        "tuned"]["accuracy"]
    assert "registry   : would register kftune-lora-merged:" in completed.stdout
    # What deploy_model would serve: the merged classifier, by the Hugging Face runtime.
    served = summary["would_deploy"]
    assert (served["kinds"], served["model_uri"], served["adapters"]) == (
        ["InferenceService"], str(merged), [])
    predictor = served["manifests"]["InferenceService"]["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == str(merged)
    assert predictor["model"]["args"] == ["--model_name=sentiment", "--backend=huggingface",
                                          "--task=sequence_classification"]
    assert (f"serving    : would deploy InferenceService sentiment: sentiment = {merged}"
            in completed.stdout)
    assert summary["arguments"]["deploy"] is True

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(merged)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
