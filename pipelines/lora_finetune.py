"""The LoRA fine-tuning pipeline: download data and model, fine-tune, compare with the base model.

    download_dataset ─┐                          ┌─> [merge] export_model ─┬─> [register] register
                      ├─> train_lora ─> evaluate ─┤                         └─> [deploy] deploy
    download_model ───┘                          └─> (no merge) ─┬─> [register] register
                                                                 └─> [deploy] deploy (+ base)

Every pipeline parameter is a field of the KFP UI's run form; the defaults are kftune's demo (a
22M-parameter BERT sentence encoder fine-tuned for 3-class tweet sentiment) so that a run with no
arguments finishes in minutes on CPU. Kubernetes-only settings (the Hugging Face token Secret, S3
credentials Secret, node selector, tolerations) go through kfp-kubernetes; `kfp.local` ignores
them, so the same pipeline also runs on a laptop.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Markdown, Metrics, Model

from ..components.benchmark.component import benchmark
from ..components.common import demo, retry
from ..components.deploy_model.component import deploy_model
from ..components.download_dataset.component import download_dataset
from ..components.download_model.component import download_model
from ..components.evaluate.component import evaluate
from ..components.export_model.component import export_model
from ..components.register_model.component import register_model
from ..components.train_lora.component import train_lora
from ..components.train_lora.step.spec import DEFAULT_TIMEOUT_MINUTES, train_arguments

PIPELINE_NAME = "lora-finetune"
# Kubeflow's Model Registry Service as its manifests install it (namespace kubeflow).
REGISTRY_ADDRESS = "http://model-registry-service.kubeflow.svc.cluster.local:8080"

DEMO_MODEL_URI = demo.DEMO_MODEL_URI
DEMO_DATASET_URI = demo.DEMO_CORPUS_URI
# The demo CSV is sorted by label, so the demo takes the whole split and holds out a seeded random
# 2 % (about 760 tweets); `max_steps` bounds the training time instead of a row slice.
DEMO_SPLIT = "train"
DEMO_EVAL_FRACTION = 0.02
DEMO_TASK = "sequence-classification"
DEMO_COLUMN_MAPPING = {"text": "text", "label": "sentiment"}
# About a minute of training on 2 CPU cores: 960 tweets, enough to beat the untrained head clearly.
DEMO_TRAINING_PARAMETERS: dict[str, Any] = {
    "max_steps": 60,
    "per_device_train_batch_size": 16,
    "learning_rate": 2e-3,
    "warmup_steps": 5,
    "lr_scheduler_type": "linear",
    "max_seq_length": 64,
    "logging_steps": 10,
    "save_strategy": "no",
    "seed": 42,
}
# BERT's attention and feed-forward projections; `classifier` (the new head) trains in full.
DEMO_LORA_CONFIG: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["query", "key", "value", "dense"],
    "modules_to_save": ["classifier"],
}

# Download retries on the cluster: transient storage or Hub errors (common/retry.py's policy:
# 3 retries, backoff 30 s, 60 s, 120 s).
DOWNLOAD_RETRIES = retry.DEFAULTS.task_retries
# Where `pvc://<claim>/path` URIs resolve (kftune.components.common.uris: $KFTUNE_PVC_ROOT).
PVC_ROOT = "/mnt/pvc"
# The Secret keys the download steps read, mapped to the environment variables they become.
HF_TOKEN_SECRET_KEYS = {"token": "HF_TOKEN"}
S3_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
}


class PipelineOutputs(NamedTuple):
    """What a run of the pipeline produces, besides the step artifacts."""

    metrics: Metrics
    adapter: Model
    report: Markdown
    training_report: HTML
    evaluation_report: HTML


# The pipeline's docstring: KFP shows each `Args:` entry beside its parameter in the run form.
PIPELINE_DOC = """Fine-tunes a model with LoRA and evaluates it against the base model.

Args:
    model_uri: The base model: `hf://org/name`, `s3://`, `gs://`, `file://`, a path,
        `pvc://claim/path` or `pkg://module/path`.
    model_revision: Hub revision of the model; empty for the default branch.
    trust_remote_code: Allow the model repository's own Python code.
    dataset_uri: The data: `hf://org/name`, `s3://`, `gs://`, `https://`, `file://`, a path,
        `pvc://claim/path` or `pkg://module/path`.
    dataset_revision: Hub revision of the dataset; empty for the default branch.
    dataset_subset: Hub dataset configuration name, if any.
    dataset_encoding: Text encoding of csv/json/text data files, e.g. `latin-1` or `cp1252`.
    split: Rows to take, in `datasets` slicing syntax (`train`, `train[:3000]`).
    column_mapping: Source column per role (text, label, prompt, completion, messages,
        chosen, rejected).
    eval_fraction: Fraction of the selected rows held out for evaluation.
    eval_split: A separate split for evaluation instead (e.g. `test[:500]`).
    seed: Seed of the held-out row selection.
    task: `sequence-classification`, `causal-lm` or `preference` (prompt/chosen/rejected
        pairs, DPO).
    training_parameters: `transformers.TrainingArguments` fields and kftune extras.
    lora_config: `peft.LoraConfig` fields.
    num_workers: Training pods (PyTorchJob Master 1 + Worker n-1, or TrainJob nodes), or
        local "nodes".
    num_procs_per_worker: Processes per pod (`nproc_per_node`): a number or `auto`.
    resources_per_worker: Requests = limits per pod, e.g. `{"gpu": 2, "cpu": 5,
        "memory": "10G"}`.
    backend: `kubernetes` (a PyTorchJob, Training Operator v1), `trainjob` (a TrainJob,
        Kubeflow Trainer v2), `local` (torchrun in the step), or `auto`: local outside a
        cluster; inside one, the kind the cluster serves (TrainJob when both).
    trainer_image: Image of the training pods; empty for the trainer image built with
        the steps' runtime image (`kftune images build`).
    timeout_minutes: Fail training (and delete the job) after this long.
    kubernetes_options: Training job settings: namespace, service_account, node_selector,
        tolerations, priority_class, queue_name, env, secret_env, pvc, runtime (TrainJob),
        ...; with the local backend only `env` applies (the others are an error).
    eval_batch_size: Evaluation batch size.
    eval_max_examples: Evaluate at most this many held-out rows.
    hf_token_secret: Kubernetes Secret whose key `token` becomes `HF_TOKEN` in the
        download steps (optional: a missing Secret is fine for public repositories).
    s3_secret: Kubernetes Secret with `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
        optionally `AWS_ENDPOINT_URL` for the download steps (optional).
    node_selector: Node labels the pipeline's step pods must run on (training pods take
        theirs from `kubernetes_options`).
    tolerations: Tolerations of the step pods, e.g. `[{"key": "gpu", "operator":
        "Exists", "effect": "NoSchedule"}]`.
    merge: Also merge the adapter into the base model (export_model): full bf16
        safetensors in Hugging Face layout, checked against base + adapter.
    register: Register the adapter (and the merged model) in the Kubeflow Model Registry.
    registry_address: The Model Registry's REST address (with `register`).
    registered_model_name: Registered model name of the adapter; the merged model is
        `<name>-merged`.
    model_version: Version name in the registry; empty for the KFP run's name.
    deploy: Serve the model with KServe and wait until it is Ready (deploy_model): the
        base model with the adapter, or with `merge` the merged model.
    serving_name: Name of the KServe service, and the `model` name clients call the
        fine-tuned model by (the base model is `<name>-base`).
    serving_kind: `llm-inference-service` (LLMInferenceService, vLLM), `inference-service`
        (InferenceService, Hugging Face runtime), or `auto` (what the cluster serves).
    serving_service_account: The predictor's ServiceAccount, whose Secrets give KServe the
        artifact store's credentials; empty for the namespace's `default`.
    serving_resources: Requests = limits of the model server, e.g. `{"gpu": 1,
        "memory": "24Gi"}`; empty for the runtime's defaults.
    benchmark_tasks: lm-evaluation-harness tasks to run on the base and the fine-tuned model
        (causal-lm), comma-separated, e.g. `hellaswag,arc_easy`; empty: no benchmark step.
    benchmark_num_fewshot: Few-shot examples in each benchmark prompt.
    benchmark_limit: Examples per benchmark task.
    benchmark_batch_size: Benchmark requests per forward pass.
    benchmark_task_source: A task YAML or a directory of them, for benchmark tasks of your
        own (no Hub needed): a path, `pvc://`, `s3://`, `gs://` or `https://` URI.
"""


def make_pipeline(
    *, download_retries: int = DOWNLOAD_RETRIES, pvc_claims: Sequence[str] = ()
) -> Callable[..., Any]:
    """Builds the pipeline function.

    Args:
        download_retries: Retries (with exponential backoff) of the download steps. The compiled
            pipeline uses 3; `kftune run` uses 0, since a local run fails on bad input rather
            than on flaky networks, and the downloads retry transient errors themselves.
        pvc_claims: Existing PersistentVolumeClaims to mount into the download and evaluate
            steps at `/mnt/pvc/<claim>`, where `pvc://<claim>/path` URIs resolve. Claims are
            fixed when the pipeline is compiled (`kftune submit --pvc CLAIM`); the checked-in
            compiled pipeline mounts none.

    Returns:
        The `@dsl.pipeline` function.
    """

    def lora_finetune_pipeline(
        model_uri: str = DEMO_MODEL_URI,
        model_revision: str = "",
        trust_remote_code: bool = False,
        dataset_uri: str = DEMO_DATASET_URI,
        dataset_revision: str = "",
        dataset_subset: str = "",
        dataset_encoding: str = "utf-8",
        split: str = DEMO_SPLIT,
        column_mapping: dict = DEMO_COLUMN_MAPPING,
        eval_fraction: float = DEMO_EVAL_FRACTION,
        eval_split: str = "",
        seed: int = 42,
        task: str = DEMO_TASK,
        training_parameters: dict = DEMO_TRAINING_PARAMETERS,
        lora_config: dict = DEMO_LORA_CONFIG,
        num_workers: int = 1,
        num_procs_per_worker: str = "1",
        resources_per_worker: dict = {},  # noqa: B006 (KFP pipeline parameter default)
        backend: str = "auto",
        trainer_image: str = "",
        timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES,
        kubernetes_options: dict = {},  # noqa: B006
        eval_batch_size: int = 32,
        eval_max_examples: int = 500,
        hf_token_secret: str = "hf-token",
        s3_secret: str = "s3-credentials",
        node_selector: dict = {},  # noqa: B006
        tolerations: list = [],  # noqa: B006
        merge: bool = False,
        register: bool = False,
        registry_address: str = REGISTRY_ADDRESS,
        registered_model_name: str = "kftune-lora",
        model_version: str = "",
        deploy: bool = False,
        serving_name: str = "kftune-lora",
        serving_kind: str = "auto",
        serving_service_account: str = "",
        serving_resources: dict = {},  # noqa: B006
        benchmark_tasks: str = "",
        benchmark_num_fewshot: int = 0,
        benchmark_limit: int = 100,
        benchmark_batch_size: int = 8,
        benchmark_task_source: str = "",
    ) -> PipelineOutputs:
        # locals(): the pipeline's parameters (KFP channels while the pipeline is built).
        return _add_steps(locals(), download_retries=download_retries, pvc_claims=pvc_claims)

    lora_finetune_pipeline.__doc__ = PIPELINE_DOC
    return dsl.pipeline(
        name=PIPELINE_NAME,
        display_name="LoRA fine-tune",
        description=(
            "Downloads a dataset and a model, fine-tunes the model with LoRA across PyTorchJob "
            "workers (or torchrun locally), and compares it with the base model on held-out rows."
        ),
    )(lora_finetune_pipeline)


def _add_steps(
    arguments: Mapping[str, Any], *, download_retries: int, pvc_claims: Sequence[str]
) -> PipelineOutputs:
    """The pipeline's steps for its `arguments`: download -> train -> evaluate."""
    data_task, model_task = _add_downloads(arguments, download_retries)
    train_task = train_lora(
        model=model_task.outputs["model"],
        train_data=data_task.outputs["train_data"],
        **train_arguments(arguments),
    ).set_display_name("Fine-tune with LoRA")
    # A re-run trains again: training is the expensive, non-deterministic step whose result
    # a user re-runs the pipeline for.
    train_task.set_caching_options(False)
    # The KFP run's name, for the MLflow run the trainer logs to (when a tracking URI is set).
    kubernetes.use_field_path_as_env(
        train_task, env_name="KFP_RUN_NAME",
        field_path="metadata.annotations['pipelines.kubeflow.org/run_name']")
    eval_task = evaluate(
        base_model=model_task.outputs["model"],
        adapter=train_task.outputs["adapter"],
        eval_data=data_task.outputs["eval_data"],
        task=arguments["task"],
        batch_size=arguments["eval_batch_size"],
        max_examples=arguments["eval_max_examples"],
    ).set_display_name("Evaluate base vs fine-tuned")
    eval_task.set_caching_options(False)
    after = _add_after_training(arguments, model_task, train_task, eval_task, pvc_claims)
    for step in (data_task, model_task, train_task, eval_task, *after):
        kubernetes.add_node_selector_json(step, arguments["node_selector"])
        kubernetes.add_toleration_json(step, arguments["tolerations"])
    for claim in pvc_claims:
        for step in (data_task, model_task, eval_task):
            kubernetes.mount_pvc(step, pvc_name=claim, mount_path=f"{PVC_ROOT}/{claim}")
    return PipelineOutputs(
        metrics=eval_task.outputs["metrics"],
        adapter=train_task.outputs["adapter"],
        report=eval_task.outputs["report"],
        training_report=train_task.outputs["report"],
        evaluation_report=eval_task.outputs["html_report"],
    )


def _add_after_training(arguments: Mapping[str, Any], model_task: Any, train_task: Any,
                        eval_task: Any, pvc_claims: Sequence[str] = ()) -> list[Any]:
    """The optional steps after evaluation, each behind its switch; returns the steps added.

    `merge`: export_model merges the adapter into the base model (the evaluation's metrics go
    into its manifest). `benchmark_tasks` (not empty): benchmark runs lm-evaluation-harness on the
    base model and on the merged model, or the adapter. `register`: register_model records the
    adapter, and the merged model when there is one, in the Model Registry. `deploy`:
    deploy_model serves the merged model, or the base model with the adapter, with KServe. The
    switches are run parameters, so the compiled pipeline holds the steps inside `dsl.If` groups:
    the benchmark, registration and deployment of the merged model inside the merge group, those
    of the adapter alone in its `dsl.Else`.
    """
    adapter = train_task.outputs["adapter"]
    with dsl.If(arguments["merge"] == True, name="merge"):  # noqa: E712 (a KFP condition)
        export_task = export_model(
            base_model=model_task.outputs["model"],
            adapter=adapter,
            eval_metrics=eval_task.outputs["metrics"],
            task=arguments["task"],
        ).set_display_name("Merge adapter into the base model")
        export_task.set_caching_options(False)
        with dsl.If(arguments["benchmark_tasks"] != "", name="benchmark"):
            benchmark_merged = _benchmark(arguments, model_task, export_task.outputs[
                "merged_model"], pvc_claims)
        with dsl.If(arguments["register"] == True, name="register"):  # noqa: E712
            register_both = _register(arguments, adapter, eval_task,
                                      merged_model=export_task.outputs["merged_model"])
        with dsl.If(arguments["deploy"] == True, name="deploy"):  # noqa: E712
            deploy_merged = _deploy(arguments, adapter, model_task,
                                    merged_model=export_task.outputs["merged_model"])
    with dsl.Else(name="adapter only"):
        with dsl.If(arguments["benchmark_tasks"] != "", name="benchmark adapter"):
            benchmark_adapter = _benchmark(arguments, model_task, adapter, pvc_claims)
        with dsl.If(arguments["register"] == True, name="register adapter"):  # noqa: E712
            register_adapter = _register(arguments, adapter, eval_task)
        with dsl.If(arguments["deploy"] == True, name="deploy adapter"):  # noqa: E712
            deploy_adapter = _deploy(arguments, adapter, model_task)
    return [export_task, benchmark_merged, register_both, deploy_merged, benchmark_adapter,
            register_adapter, deploy_adapter]


def _benchmark(arguments: Mapping[str, Any], model_task: Any, tuned_model: Any,
               pvc_claims: Sequence[str]) -> Any:
    """The benchmark step on the base model and `tuned_model`, with the Hub token Secret."""
    task = benchmark(
        base_model=model_task.outputs["model"],
        tuned_model=tuned_model,
        tasks=arguments["benchmark_tasks"],
        num_fewshot=arguments["benchmark_num_fewshot"],
        limit=arguments["benchmark_limit"],
        batch_size=arguments["benchmark_batch_size"],
        task_source=arguments["benchmark_task_source"],
    ).set_display_name("Benchmark base vs fine-tuned (lm-evaluation-harness)")
    _with_source_secrets(task, arguments)
    for claim in pvc_claims:
        kubernetes.mount_pvc(task, pvc_name=claim, mount_path=f"{PVC_ROOT}/{claim}")
    return task


def _deploy(arguments: Mapping[str, Any], adapter: Any, model_task: Any,
            merged_model: Any = None) -> Any:
    extra = {"merged_model": merged_model} if merged_model is not None else {}
    task = deploy_model(
        adapter=adapter,
        base_model=model_task.outputs["model"],
        serving_name=arguments["serving_name"],
        kind=arguments["serving_kind"],
        service_account=arguments["serving_service_account"],
        resources=arguments["serving_resources"],
        **extra,
    ).set_display_name("Serve with KServe")
    task.set_caching_options(False)
    return task


def _register(arguments: Mapping[str, Any], adapter: Any, eval_task: Any,
              merged_model: Any = None) -> Any:
    extra = {"merged_model": merged_model} if merged_model is not None else {}
    task = register_model(
        adapter=adapter,
        eval_metrics=eval_task.outputs["metrics"],
        registry_address=arguments["registry_address"],
        model_name=arguments["registered_model_name"],
        version=arguments["model_version"],
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        **extra,
    ).set_display_name("Register in the Model Registry")
    task.set_caching_options(False)
    return task


def _add_downloads(arguments: Mapping[str, Any], download_retries: int) -> tuple[Any, Any]:
    """The dataset and model download steps: cached, retried, with the Hub and S3 Secrets."""
    data_task = download_dataset(
        uri=arguments["dataset_uri"],
        split=arguments["split"],
        revision=arguments["dataset_revision"],
        subset=arguments["dataset_subset"],
        encoding=arguments["dataset_encoding"],
        column_mapping=arguments["column_mapping"],
        eval_fraction=arguments["eval_fraction"],
        eval_split=arguments["eval_split"],
        seed=arguments["seed"],
    ).set_display_name("Download dataset")
    model_task = download_model(
        uri=arguments["model_uri"],
        revision=arguments["model_revision"],
        task=arguments["task"],
        trust_remote_code=arguments["trust_remote_code"],
    ).set_display_name("Download model")
    for download in (data_task, model_task):
        # Cached by their inputs (URI, revision, split, ...): pin a revision to make a cache
        # hit mean "the same bytes".
        download.set_caching_options(True)
        if download_retries:
            download.set_retry(**{**retry.DEFAULTS.kfp_retry(), "num_retries": download_retries})
        _with_source_secrets(download, arguments)
    return data_task, model_task


def _with_source_secrets(task: Any, arguments: Mapping[str, Any]) -> None:
    """The Hub token and S3 credentials Secrets as `task`'s env (each optional), for its sources."""
    kubernetes.use_secret_as_env(task, secret_name=arguments["hf_token_secret"],
                                 secret_key_to_env=HF_TOKEN_SECRET_KEYS, optional=True)
    kubernetes.use_secret_as_env(task, secret_name=arguments["s3_secret"],
                                 secret_key_to_env=S3_SECRET_KEYS, optional=True)


lora_finetune_pipeline = make_pipeline()
