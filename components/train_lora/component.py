"""KFP interface of the train_lora component."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from ..common.images import RUNTIME_IMAGE
from .config import training_parameters_help

TRAINING_PARAMETERS_PLACEHOLDER = "(TRAINING_PARAMETERS_HELP)"


def train_lora(
    model: Input[Model],
    train_data: Input[Dataset],
    adapter: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    task: str = "causal-lm",
    training_parameters: dict = None,
    lora_config: dict = None,
    num_workers: int = 1,
    num_procs_per_worker: str = "1",
    resources_per_worker: dict = None,
    backend: str = "auto",
    image: str = "",
    timeout_minutes: int = 1440,
    kubernetes_options: dict = None,
):
    """Fine-tunes `model` with LoRA on `train_data` across `num_workers` x `num_procs_per_worker`.

    Args:
        model: The base model (output of download_model).
        train_data: The training rows (output of download_dataset).
        adapter: Output. The LoRA adapter (PEFT layout), tokenizer and manifest naming the base
            model.
        metrics: Output. Final train loss, steps, tokens/s and runtime.
        report: Output. An HTML page: loss, learning-rate, gradient-norm and tokens/s curves
            (one point per logged step; the adapter keeps them as history.jsonl) and the run's
            settings.
        task: `causal-lm`, `sequence-classification` or `preference`.
        training_parameters: e.g. `{"learning_rate": 2e-4, "num_train_epochs": 1,
            "per_device_train_batch_size": 8}`. (TRAINING_PARAMETERS_HELP)
        lora_config: `peft.LoraConfig` fields, e.g. `{"r": 8, "lora_alpha": 8,
            "lora_dropout": 0.1}`.
        num_workers: Pods (PyTorchJob Master 1 + Worker n-1, or TrainJob nodes), or local
            "nodes".
        num_procs_per_worker: Processes per pod (torchrun `--nproc-per-node`): a number or `auto`.
        resources_per_worker: Requests = limits per pod, e.g. `{"gpu": 2, "cpu": 5,
            "memory": "10G"}`.
        backend: `kubernetes` (a PyTorchJob, Training Operator v1), `trainjob` (a TrainJob,
            Kubeflow Trainer v2), `local` (torchrun on this host), or `auto`: local outside a
            cluster; inside one, the kind the cluster serves (TrainJob when both).
        image: Trainer image for the pods; empty for the trainer image built with this step's
            runtime image (`kftune images build`).
        timeout_minutes: Fail the step (and delete the job) when training takes longer.
        kubernetes_options: Everything else about the training job: namespace, service_account,
            node_selector, tolerations, priority_class, queue_name (Kueue), env, secret_env
            (`{"HF_TOKEN": "secret-name:key"}`), elastic_policy (`{"min_nodes", "max_nodes",
            "max_restarts"}`), clean_pod_policy, backoff_limit, ttl_seconds_after_finished, pvc
            (an existing claim to stage the inputs on once per job), job_name, runtime (the
            TrainJob's ClusterTrainingRuntime, default torch-distributed). Only `env` applies to
            the local backend; an option the chosen backend cannot honour is an error.
    """
    import logging

    from kftune.components.train_lora.step.backends import StepFiles
    from kftune.components.train_lora.step.launch import run_training
    from kftune.components.train_lora.step.spec import TrainParameters

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    files = StepFiles(model_dir=model.path, model_uri=model.uri, data_dir=train_data.path,
                      data_uri=train_data.uri, adapter_dir=adapter.path, adapter_uri=adapter.uri)
    # The signature's parameters (held equal to TrainParameters by a test), as one object.
    run_training(TrainParameters.of(locals()), files, metrics=metrics, report_path=report.path)


# The documentation of `training_parameters` comes from the settings' definitions (config.py); it
# is filled in before KFP reads the docstring into the component's description.
train_lora.__doc__ = train_lora.__doc__.replace(
    TRAINING_PARAMETERS_PLACEHOLDER, training_parameters_help()
)
train_lora = dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)(train_lora)
