"""KFP interface of the register_model component."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from ..common.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def register_model(
    adapter: Input[Model],
    registration: Output[Artifact],
    registry_address: str,
    model_name: str,
    version: str = "",
    merged_model: Input[Model] = None,
    eval_metrics: Input[Metrics] = None,
    registry_port: int = 0,
    author: str = "kftune",
    pipeline_run_id: str = "",
    pipeline_run_name: str = "",
):
    """Registers the adapter (and the merged model) in the Kubeflow Model Registry.

    The adapter becomes version `version` of registered model `model_name` (format
    `peft-lora`), the merged model version `version` of `<model_name>-merged` (format
    `huggingface`), each with its artifact URI and the KFP provenance as custom properties:
    pipeline run, base model, dataset, LoRA settings, evaluation metrics. Transient registry
    errors are retried with backoff; an unreachable or refusing registry fails the step.

    Args:
        adapter: The LoRA adapter (output of train_lora).
        registration: Output. The registry ids of what was registered (registration.json).
        registry_address: The registry's REST address, e.g.
            `http://model-registry-service.kubeflow.svc.cluster.local:8080`.
        model_name: Registered model name of the adapter.
        version: Version name, unique per registered model; empty for the pipeline run's name.
        merged_model: Optional. The merged model (output of export_model).
        eval_metrics: Optional. The evaluate step's metrics, recorded on each version.
        registry_port: The port when `registry_address` has none (0: 8080/443 by scheme).
        author: Author and owner recorded on the entries.
        pipeline_run_id: The KFP run's id (the pipeline passes it).
        pipeline_run_name: The KFP run's name (the pipeline passes it).
    """
    import json

    from kftune.components.register_model import registry

    target = registry.RegistryTarget(
        server_address=registry_address, model_name=model_name,
        version=version or pipeline_run_name, port=registry_port, author=author,
    )
    entries = registry.registration_plan(
        adapter.path, adapter.uri, target,
        merged_dir=merged_model.path if merged_model is not None else None,
        merged_uri=merged_model.uri if merged_model is not None else None,
        eval_metrics=dict(eval_metrics.metadata) if eval_metrics is not None else None,
        run={"run_id": pipeline_run_id, "run_name": pipeline_run_name},
    )
    done = registry.register(entries, target)
    with open(registration.path, "w") as handle:
        json.dump(done, handle, indent=2)
    registration.metadata["registered"] = [f"{e['name']}:{e['version']}" for e in done]
