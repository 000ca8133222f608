"""KFP interface of the deploy_model component."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from ..common.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def deploy_model(
    adapter: Input[Model],
    base_model: Input[Model],
    service: Output[Artifact],
    serving_name: str,
    kind: str = "auto",
    namespace: str = "",
    merged_model: Input[Model] = None,
    base_model_uri: str = "",
    service_account: str = "",
    resources: dict = {},  # noqa: B006 (KFP component parameter default)
    runtime_image: str = "",
    runtime_args: list = [],  # noqa: B006
    timeout_minutes: int = 30,
    delete_on_failure: bool = False,
) -> str:
    """Serves the fine-tuned model with KServe and waits until it is Ready; returns its URL.

    Creates (or, on a re-run, replaces) a KServe `LLMInferenceService` (serving.kserve.io/v1alpha1:
    the base model with the adapter in `spec.model.lora.adapters`) or an `InferenceService`
    (serving.kserve.io/v1beta1, Hugging Face runtime on vLLM: `--enable-lora --lora-modules`);
    with `merged_model`, the merged model alone. Clients call the adapter (or the merged model) by
    `serving_name` in the OpenAI request's `model`, the base model by `<serving_name>-base`. A
    service that fails or is not Ready in time fails the step with its conditions' reasons.

    Args:
        adapter: The LoRA adapter (output of train_lora).
        base_model: The base model (output of download_model); its URI is served unless
            `base_model_uri` is given.
        service: Output. service.json: kind, name, namespace, URL, the model names to call.
        serving_name: The service's name and the `model` name of the fine-tuned model.
        kind: `llm-inference-service`, `inference-service`, or `auto` (what the cluster serves,
            LLMInferenceService first).
        namespace: Namespace of the service; empty for the step's own.
        merged_model: Optional. The merged model (output of export_model), served instead of
            base + adapter.
        base_model_uri: The base model's URI for the predictor instead of the artifact's
            (e.g. `hf://org/name`).
        service_account: The predictor's ServiceAccount, whose Secrets give KServe's storage
            initializer the artifact store's credentials; empty for `default`.
        resources: Requests = limits of the model server, e.g. `{"gpu": 1, "memory": "24Gi"}`.
        runtime_image: The model server's image instead of the runtime's.
        runtime_args: Extra model server (vLLM) arguments.
        timeout_minutes: Fail after this long without Ready.
        delete_on_failure: Delete the service when it fails or times out (default: leave it
            for `kubectl describe`; the next run replaces it).

    Returns:
        The service's URL.
    """
    import json

    from kftune.components.deploy_model import deploy, kserve

    config = deploy.DeployConfig(
        name=serving_name, namespace=namespace, kind=kind, base_model_uri=base_model_uri,
        service_account=service_account, resources=resources, image=runtime_image,
        args=tuple(runtime_args), timeout_seconds=timeout_minutes * 60.0,
        delete_on_failure=delete_on_failure,
    )
    plan = deploy.serving_plan(
        adapter.path, adapter.uri, config, base_uri=base_model.uri,
        merged_dir=merged_model.path if merged_model is not None else None,
        merged_uri=merged_model.uri if merged_model is not None else None,
    )
    served = kserve.deploy(plan, config)
    with open(service.path, "w") as handle:
        json.dump(served, handle, indent=2)
    service.metadata.update({key: served[key] for key in ("kind", "name", "namespace", "url")})
    return served["url"]
