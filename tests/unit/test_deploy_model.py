"""deploy_model against the API server double serving KServe v0.20's CRDs (real kubernetes client).

The scenarios below play KServe's controllers: they write the service's status (conditions,
`observedGeneration`, URL) the way the LLMInferenceService and InferenceService controllers do.
Every manifest passes through the vendored CRD schemas (pruning, 422) and KServe's validating
webhook rules (`tests/crds/*validation.go.txt`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from kftune.components.deploy_model import deploy, kserve
from support.fake_kubernetes import SERVING, FakeKubernetes

NAMESPACE = "serving"
NAME = "sentiment-lora"
ADAPTER_URI = "minio://mlpipeline/v2/artifacts/lora-finetune/run-1/train-lora/adapter"
BASE_URI = "minio://mlpipeline/v2/artifacts/lora-finetune/run-1/download-model/model"
MERGED_URI = "s3://mlpipeline/v2/artifacts/lora-finetune/run-1/export-model/merged_model"
PLURAL = {"llm-inference-service": "llminferenceservices", "inference-service": "inferenceservices"}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFTUNE_RETRY_DELAY_SECONDS", "0.01")


def artifacts(tmp_path: Path, task: str = "causal-lm", rank: int = 8) -> dict[str, str]:
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    write_manifest(adapter, {"kind": "adapter", "task": task, "lora": {"r": rank},
                             "base_model": {"source": {"uri": "hf://org/base"}}})
    merged.mkdir()
    write_manifest(merged, {"kind": "model", "task": task, "merged_from": {"adapter": "x"}})
    return {"adapter": str(adapter), "merged": str(merged)}


def config(**changes: Any) -> deploy.DeployConfig:
    fields = {"name": NAME, "namespace": NAMESPACE, "poll_seconds": 0.01, "timeout_seconds": 5.0,
              **changes}
    return deploy.DeployConfig(**fields)


def plan_for(paths: dict[str, str], cfg: deploy.DeployConfig, merged: bool = False,
             **extra: Any) -> deploy.ServingPlan:
    return deploy.serving_plan(
        paths["adapter"], ADAPTER_URI, cfg, base_uri=BASE_URI,
        merged_dir=paths["merged"] if merged else None, merged_uri=MERGED_URI if merged else None,
        **extra)


def condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-02T08:00:00Z"}


def controller(*steps: tuple[float, list[dict[str, Any]], str]):
    """A scenario: after each delay, the given conditions (and URL) for the object's generation."""
    def scenario(fake: FakeKubernetes, service: dict[str, Any]) -> None:
        meta = service["metadata"]
        for delay, conditions, url in steps:
            time.sleep(delay)
            status = {"observedGeneration": meta["generation"], "conditions": conditions}
            if url:
                status |= {"url": url, "addresses": [{"url": url}]}
            fake.set_status(meta["namespace"], meta["name"], status)
    return scenario


STARTING = [condition("MainWorkloadReady", "False", "MinimumReplicasUnavailable",
                      "Deployment does not have minimum availability."),
            condition("Ready", "False", "MinimumReplicasUnavailable",
                      "Deployment does not have minimum availability.")]
READY = [condition("MainWorkloadReady", "True"), condition("Ready", "True")]
URL = f"http://{NAME}.{NAMESPACE}.example.com"


@dataclasses.dataclass
class Case:
    name: str
    kind: str
    task: str = "causal-lm"
    merged: bool = False
    expected_url_suffix: str = ""


MANIFEST_CASES = [
    Case("llmisvc-lora", "llm-inference-service", expected_url_suffix="/v1/completions"),
    Case("llmisvc-merged", "llm-inference-service", merged=True,
         expected_url_suffix="/v1/completions"),
    Case("isvc-lora", "inference-service", expected_url_suffix="/openai/v1/completions"),
    Case("isvc-merged", "inference-service", merged=True,
         expected_url_suffix="/openai/v1/completions"),
    Case("isvc-classifier-merged", "inference-service", task="sequence-classification",
         merged=True, expected_url_suffix=f"/v1/models/{NAME}:predict"),
]


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=[case.name for case in MANIFEST_CASES])
def test_admitted_by_the_schema_and_ready_gives_the_url(tmp_path: Path, case: Case) -> None:
    cfg = config(kind=case.kind, service_account="kftune-serving", resources={"gpu": 1,
                 "memory": "24Gi"}, args=("--max-model-len=2048",))
    plan = plan_for(artifacts(tmp_path, task=case.task), cfg, merged=case.merged)
    with FakeKubernetes(serves=SERVING) as fake:  # leaving it fails on any pruned field
        fake.on_create = controller((0.05, STARTING, ""), (0.05, READY, URL))
        served = kserve.deploy(plan, cfg, fake.api_client())
        stored = fake.job(NAMESPACE, NAME)
    assert served["url"] == URL
    route = served.get("completions_url") or served.get("predict_url")
    assert route == URL + case.expected_url_suffix
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kftune"}
    text = json.dumps(stored)
    assert "minio://" not in text and "s3://mlpipeline" in text
    if case.merged:
        assert served["adapters"] == [] and served["model_uri"] == MERGED_URI
        assert '"lora"' not in text and "--enable-lora" not in text
    else:
        assert served["adapters"] == [{"name": NAME, "uri": ADAPTER_URI.replace("minio", "s3")}]
        assert served["model_name"] == f"{NAME}-base"


def test_llm_inference_service_names_base_and_adapter(tmp_path: Path) -> None:
    cfg = config(kind="llm-inference-service", service_account="kftune-serving",
                 resources={"gpu": 1})
    body = deploy.manifest(cfg.kind, plan_for(artifacts(tmp_path, rank=24), cfg), cfg, NAMESPACE)
    assert body["spec"]["model"] == {
        "uri": BASE_URI.replace("minio", "s3"), "name": f"{NAME}-base",
        "lora": {"adapters": [{"name": NAME, "uri": ADAPTER_URI.replace("minio", "s3")}],
                 "maxRank": 32}}
    assert body["spec"]["template"] == {
        "serviceAccountName": "kftune-serving",
        "containers": [{"name": "main", "resources": {"requests": {"nvidia.com/gpu": "1"},
                                                      "limits": {"nvidia.com/gpu": "1"}}}]}


def test_inference_service_mounts_base_and_adapter_under_one_parent(tmp_path: Path) -> None:
    cfg = config(kind="inference-service")
    predictor = deploy.manifest(cfg.kind, plan_for(artifacts(tmp_path, rank=64), cfg), cfg,
                                NAMESPACE)["spec"]["predictor"]
    assert predictor["storageUris"] == [
        {"uri": BASE_URI.replace("minio", "s3"), "mountPath": "/mnt/models/base"},
        {"uri": ADAPTER_URI.replace("minio", "s3"), "mountPath": f"/mnt/models/lora/{NAME}"}]
    assert predictor["model"]["args"] == [
        f"--model_name={NAME}-base", "--model_dir=/mnt/models/base", "--enable-lora",
        "--lora-modules", f"{NAME}=/mnt/models/lora/{NAME}", "--max-lora-rank=64"]
    assert "storageUri" not in predictor["model"]


def test_failure_reports_every_condition_reason(tmp_path: Path) -> None:
    cfg = config(kind="llm-inference-service")
    failed = [condition("MainWorkloadReady", "False", "ProgressDeadlineExceeded",
                        'ReplicaSet "sentiment-lora-kserve-7d" has timed out progressing.'),
              condition("RouterReady", "True"),
              condition("Ready", "False", "ProgressDeadlineExceeded", "timed out progressing")]
    with FakeKubernetes(serves=SERVING) as fake:
        fake.on_create = controller((0.02, STARTING, ""), (0.02, failed, ""))
        with pytest.raises(RuntimeError) as raised:
            kserve.deploy(plan_for(artifacts(tmp_path), cfg), cfg, fake.api_client())
        kept = fake.job(NAMESPACE, NAME)
    message = str(raised.value)
    assert message.startswith(f"LLMInferenceService {NAMESPACE}/{NAME} failed: ")
    assert "MainWorkloadReady False: ProgressDeadlineExceeded: ReplicaSet" in message
    assert "Ready False: ProgressDeadlineExceeded: timed out progressing" in message
    assert "RouterReady" not in message
    assert kept is not None  # left for `kubectl describe`


def test_failed_model_load_of_an_inference_service(tmp_path: Path) -> None:
    cfg = config(kind="inference-service", delete_on_failure=True)

    def scenario(fake: FakeKubernetes, service: dict[str, Any]) -> None:
        time.sleep(0.02)
        fake.set_status(NAMESPACE, NAME, {
            "observedGeneration": 1,
            "conditions": [condition("PredictorReady", "False", "MinimumReplicasUnavailable"),
                           condition("Ready", "False", "MinimumReplicasUnavailable")],
            "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                            "lastFailureInfo": {"reason": "ModelLoadFailed",
                                                "message": "ValueError: unsupported LoRA rank"}}})

    with FakeKubernetes(serves=SERVING) as fake:
        fake.on_create = scenario
        with pytest.raises(RuntimeError, match="model ModelLoadFailed: ValueError: unsupported"):
            kserve.deploy(plan_for(artifacts(tmp_path), cfg), cfg, fake.api_client())
        assert fake.job(NAMESPACE, NAME) is None and fake.deleted == [NAME]


def test_timeout_says_what_it_still_waits_for(tmp_path: Path) -> None:
    cfg = config(kind="llm-inference-service", timeout_seconds=0.3)
    with FakeKubernetes(serves=SERVING) as fake:
        fake.on_create = controller((0.02, STARTING, ""))
        started = time.monotonic()
        with pytest.raises(TimeoutError) as raised:
            kserve.deploy(plan_for(artifacts(tmp_path), cfg), cfg, fake.api_client())
    assert time.monotonic() - started < 3
    assert str(raised.value) == (
        f"LLMInferenceService {NAMESPACE}/{NAME} was not Ready after 0.3 s; still waiting for "
        "MainWorkloadReady False: MinimumReplicasUnavailable: Deployment does not have minimum "
        "availability.; Ready False: MinimumReplicasUnavailable: Deployment does not have "
        "minimum availability.")


def test_timeout_without_any_status_names_the_controller(tmp_path: Path) -> None:
    cfg = config(kind="inference-service", timeout_seconds=0.1)
    with FakeKubernetes(serves=SERVING) as fake, pytest.raises(TimeoutError,
                                                               match="KServe's controller"):
        kserve.deploy(plan_for(artifacts(tmp_path), cfg), cfg, fake.api_client())


@dataclasses.dataclass
class KindCase:
    name: str
    serves: tuple[str, ...]
    wanted: str = "auto"
    task: str = "causal-lm"
    expected: str = ""
    expected_error: str = ""


KIND_CASES = [
    KindCase("both-served-prefers-llmisvc", SERVING, expected="llminferenceservices"),
    KindCase("only-isvc", ("inferenceservices",), expected="inferenceservices"),
    KindCase("classifier-takes-isvc", SERVING, task="sequence-classification",
             expected="inferenceservices"),
    KindCase("neither", ("pytorchjobs",), expected_error=(
        "this cluster serves neither LLMInferenceService (serving.kserve.io/v1alpha1) nor "
        "InferenceService (serving.kserve.io/v1beta1)")),
    KindCase("named-but-missing", ("inferenceservices",), wanted="llm-inference-service",
             expected_error="this cluster does not serve LLMInferenceService "
                            "(serving.kserve.io/v1alpha1)"),
]


@pytest.mark.parametrize("case", KIND_CASES, ids=[case.name for case in KIND_CASES])
def test_auto_discovery_picks_what_the_cluster_serves(tmp_path: Path, case: KindCase) -> None:
    cfg = config(kind=case.wanted)
    plan = plan_for(artifacts(tmp_path, task=case.task), cfg,
                    merged=case.task != "causal-lm")
    with FakeKubernetes(serves=case.serves) as fake:
        fake.on_create = controller((0.01, READY, URL))
        if case.expected_error:
            with pytest.raises(RuntimeError, match=case.expected_error.replace(
                    "(", r"\(").replace(")", r"\)")):
                kserve.deploy(plan, cfg, fake.api_client())
            assert fake.created == []
            return
        kserve.deploy(plan, cfg, fake.api_client())
        created = [path for method, path in fake.requests if method == "POST"]
    assert created == [f"/apis/serving.kserve.io/"
                       f"{'v1alpha1' if case.expected.startswith('llm') else 'v1beta1'}"
                       f"/namespaces/{NAMESPACE}/{case.expected}"]


def test_rerun_replaces_the_service_and_waits_for_the_new_generation(tmp_path: Path) -> None:
    cfg = config(kind="llm-inference-service")
    paths = artifacts(tmp_path)
    with FakeKubernetes(serves=SERVING) as fake:
        fake.on_create = controller((0.01, READY, URL))
        kserve.deploy(plan_for(paths, cfg), cfg, fake.api_client())
        # The second run serves another adapter; the old Ready status stays until the
        # controller has seen generation 2.
        fake.on_replace = controller((0.2, STARTING, ""), (0.05, READY, URL + "/v2"))
        again = dataclasses.replace(cfg, base_model_uri="hf://org/base@abc123")
        served = kserve.deploy(plan_for(paths, again), again, fake.api_client())
        stored = fake.job(NAMESPACE, NAME)
    assert fake.created == [NAME] and fake.replaced == [NAME]
    assert stored["metadata"]["generation"] == 2
    assert stored["spec"]["model"]["uri"] == "hf://org/base:abc123"
    assert served["url"] == URL + "/v2"


def test_a_service_kftune_did_not_create_is_left_alone(tmp_path: Path) -> None:
    cfg = config(kind="inference-service")
    with FakeKubernetes(serves=SERVING) as fake:
        from kubernetes import client

        client.CustomObjectsApi(fake.api_client()).create_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices",
            {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
             "metadata": {"name": NAME},
             "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"},
                                              "storageUri": "gs://models/iris"}}}})
        with pytest.raises(RuntimeError, match="kftune did not create it"):
            kserve.deploy(plan_for(artifacts(tmp_path), cfg), cfg, fake.api_client())
        assert fake.replaced == []


def test_a_webhook_refusal_is_one_line_with_the_servers_words(tmp_path: Path) -> None:
    cfg = config(kind="llm-inference-service")
    plan = dataclasses.replace(plan_for(artifacts(tmp_path), cfg), model_name=NAME)
    with FakeKubernetes(serves=SERVING) as fake, pytest.raises(RuntimeError) as raised:
        kserve.deploy(plan, cfg, fake.api_client())
    assert str(raised.value) == (
        f"the Kubernetes API refused LLMInferenceService {NAMESPACE}/{NAME}: HTTP 422 admission "
        'webhook "llminferenceservice.kserve-webhook-server.v1alpha2.validator" denied the '
        f'request: LLMInferenceService.serving.kserve.io "{NAME}" is invalid: '
        f'[spec.model.lora.adapters[0].name: Invalid value: "{NAME}": adapter name must differ '
        f'from base model name "{NAME}"]')


def test_bad_inputs_are_reported_together() -> None:
    with pytest.raises(InputError) as raised:
        deploy.DeployConfig(name="Sentiment_LoRA", kind="knative", namespace="Team A",
                            base_model_uri="s3://AKIAEXAMPLE:wJalrXUtnFEMI@bucket/base",
                            resources={"gpu": -1, "memory": "lots", "disk": 1},
                            timeout_seconds=0, args=("--hf-token", 3))
    problems = raised.value.problems
    assert len(problems) == 9, problems
    assert problems[0].startswith("`serving_name` must be a lowercase DNS-1035 label")
    assert "'Sentiment_LoRA'" in problems[0]
    joined = "\n".join(problems)
    for expected in ("`namespace` must be empty", "`serving_kind` must be one of auto, "
                     "llm-inference-service, inference-service, got 'knative'",
                     "`base_model_uri`", "`serving_resources.gpu`",
                     "`serving_resources.memory`", "unknown key 'disk'",
                     "`runtime_args` must be a list of strings",
                     "`timeout_minutes` must be 1 to 1440, got 0.0"):
        assert expected in joined
    assert "wJalrXUtnFEMI" not in joined
    # The model server reads storage through its ServiceAccount, not kftune's `s3_secret`.
    credentials = next(problem for problem in problems if "`base_model_uri`" in problem)
    assert "`serving_service_account`" in credentials and "s3_secret" not in credentials


@pytest.mark.parametrize(("uri", "expected"), [
    ("minio://mlpipeline/v2/artifacts/x", "s3://mlpipeline/v2/artifacts/x"),
    ("hf://org/name@abc123", "hf://org/name:abc123"),
    ("hf://org/name", "hf://org/name"),
    ("gs://bucket/model", "gs://bucket/model"),
    ("pvc://claim/models/base", "pvc://claim/models/base"),
], ids=["minio", "hf-revision", "hf", "gs", "pvc"])
def test_uris_as_the_storage_initializer_reads_them(uri: str, expected: str) -> None:
    assert deploy.storage_uri(uri, "base_model_uri") == (expected, [])


def test_local_artifact_uris_are_refused_on_a_cluster_and_shown_in_a_preview(
        tmp_path: Path) -> None:
    paths = artifacts(tmp_path)
    cfg = config()
    with pytest.raises(InputError) as raised:
        deploy.serving_plan(paths["adapter"], paths["adapter"], cfg, base_uri="/tmp/model")
    assert [problem.split(" is ")[0] for problem in raised.value.problems] == [
        "`base_model`", "`adapter`"]
    preview = deploy.serving_plan(paths["adapter"], paths["adapter"], cfg, base_uri="/tmp/model",
                                  check_uris=False)
    assert (preview.model_uri, preview.adapters) == ("/tmp/model", ((NAME, paths["adapter"]),))


def test_a_classifier_adapter_needs_merge(tmp_path: Path) -> None:
    paths = artifacts(tmp_path, task="sequence-classification")
    with pytest.raises(InputError) as raised:
        plan_for(paths, config(kind="llm-inference-service"))
    assert raised.value.problems == [
        "a sequence-classification adapter is served only merged (vLLM serves LoRA adapters of "
        "generative models only): run with `merge` true",
        "`serving_kind` 'llm-inference-service' serves causal LMs only (vLLM); a "
        "sequence-classification model is served by `inference-service` (the Hugging Face "
        "runtime)"]
