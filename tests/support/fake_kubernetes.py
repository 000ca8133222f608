"""A Kubernetes API server double on 127.0.0.1, for the real `kubernetes` client.

It speaks the real HTTP API for the endpoints kftune's Kubernetes backends and deploy_model use —
discovery of `kubeflow.org/v1`, `trainer.kubeflow.org/v1alpha1`, `serving.kserve.io/v1alpha1` and
`serving.kserve.io/v1beta1`; create, get, replace, delete, list and watch
`pytorchjobs.kubeflow.org/v1`, `trainjobs.trainer.kubeflow.org/v1alpha1`,
`llminferenceservices.serving.kserve.io/v1alpha1` and `inferenceservices.serving.kserve.io/v1beta1`
(KServe v0.20); list and get
`clustertrainingruntimes`; list pods; read a pod and its log (with `follow`, `tailLines`,
`timestamps`, `previous`) — and rejects what a real server rejects: 409 for a taken name, 404 for
a missing object or an unserved kind, 400 for a namespace mismatch, 422 for an invalid name or an
object its CRD's structural schema refuses (the vendored CRDs of `tests/crds/`), and 403 for what
the operators' validating webhooks deny: the rules of training-operator v1.9's
`pytorchjob_webhook.go` and of trainer v2.3's TrainJob webhook (runtime must exist, no reserved
PET_* env, runtime patches only for replicated jobs and containers the runtime has), and of
KServe v0.20's validators (LoRA adapter names; InferenceService name and storage URIs). A replace
needs the stored `resourceVersion` (409 when it is stale) and bumps `metadata.generation` when
the spec changed; `status` is a subresource, so create and replace keep what the controller
wrote (`set_status`) rather than what the client sent. Unknown
fields are pruned as a structural schema prunes them, and recorded in `pruned`: leaving the
context with anything pruned fails the test (a field the real server would silently drop), unless
`allow_pruning` is set.
Objects carry a `resourceVersion`; a watch sends the events after the version it is given, ends
after `timeoutSeconds`, and can be dropped on purpose (`drop_watches`). `fail_next` makes the next
matching requests fail with a status (500 by default).

Why not kmock's emulator: it is an asyncio server (the sync client needs it on a loop in another
thread), its watch ignores `fieldSelector`, `resourceVersion` and `timeoutSeconds` and never ends,
it does not validate names (no 422) and has no pod logs; each would need a patch or a custom
reaction, which together are more code than these endpoints.

A test drives the jobs like the Training Operator would, through `set_condition`, `add_pod`,
`log` and `finish_pod`, and the served models like KServe's controllers, through `set_status`;
`on_create` runs a scenario (in a thread) for every new object, `on_replace` for every replaced
one.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_GROUP_VERSIONS = (r"kubeflow\.org/v1|trainer\.kubeflow\.org/v1alpha1|serving\.kserve\.io/v1alpha1"
                   r"|serving\.kserve\.io/v1beta1")
_JOBS = re.compile(
    rf"^/apis/({_GROUP_VERSIONS})/namespaces/([^/]+)/"
    r"(pytorchjobs|trainjobs|llminferenceservices|inferenceservices)(?:/([^/]+))?$"
)
_DISCOVERY = re.compile(rf"^/apis/({_GROUP_VERSIONS})/?$")
_RUNTIMES = re.compile(
    r"^/apis/trainer\.kubeflow\.org/v1alpha1/clustertrainingruntimes(?:/([^/]+))?$"
)
# What each served kind is: (group/version, kind, CRD file, pod container).
KINDS = {
    "pytorchjobs": ("kubeflow.org/v1", "PyTorchJob", "kubeflow.org_pytorchjobs.yaml", "pytorch"),
    "trainjobs": ("trainer.kubeflow.org/v1alpha1", "TrainJob",
                  "trainer.kubeflow.org_trainjobs.yaml", "node"),
    # KServe v0.20 (tests/crds/): served models, created by kftune's deploy_model.
    "llminferenceservices": ("serving.kserve.io/v1alpha1", "LLMInferenceService",
                             "serving.kserve.io_llminferenceservices.yaml", "main"),
    "inferenceservices": ("serving.kserve.io/v1beta1", "InferenceService",
                          "serving.kserve.io_inferenceservices.yaml", "kserve-container"),
}
SERVING = ("llminferenceservices", "inferenceservices")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")
# The Kubeflow Trainer's progress endpoint (v2.2+, KEP-2779: the controller manager's status
# server, `pkg/progress/server.go`): a TrainJob's pods POST {"trainerStatus": {...}} there.
_TRAINER_STATUS = re.compile(
    r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs/([^/]+)/status$")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeKubernetes:
    """The in-memory API server. Use as a context manager; `api_client()` gives a client of it.

    Args:
        serves: the job kinds it serves (`pytorchjobs`, `trainjobs`); the others answer 404 as on
            a cluster without that operator.
        runtimes: the ClusterTrainingRuntimes it holds (default: the vendored torch-distributed).
        crd_files: another CRD file for a kind (an older operator's), by plural.
    """

    def __init__(self, serves: tuple[str, ...] = ("pytorchjobs", "trainjobs"),
                 runtimes: list[dict[str, Any]] | None = None,
                 crd_files: dict[str, str] | None = None) -> None:
        self.serves = tuple(serves)
        self.crd_files = {plural: kind[2] for plural, kind in KINDS.items()} | (crd_files or {})
        self.runtimes = {r["metadata"]["name"]: r for r in (
            runtimes if runtimes is not None else [_vendored_runtime()])}
        self.pruned: list[str] = []
        self.allow_pruning = False
        # Set to list the runtimes as a service account without cluster-wide rights does (403).
        self.forbid_runtime_list = False
        self._cond = threading.Condition()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.previous_logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str]] = []
        self.created: list[str] = []
        self.deleted: list[str] = []
        self._version = 100
        self._faults: list[list[Any]] = []
        self._watch_generation = 0
        self._log_generation = 0
        self.on_create: Callable[[FakeKubernetes, dict[str, Any]], None] | None = None
        self.on_replace: Callable[[FakeKubernetes, dict[str, Any]], None] | None = None
        # The Trainer's progress endpoint: the bearer token it accepts (the pods' projected
        # token), and every trainerStatus it wrote, in order.
        self.trainer_status_token = f"token-{uuid.uuid4().hex}"
        self.trainer_statuses: list[dict[str, Any]] = []
        self.replaced: list[str] = []
        # Like a proxy that closes idle streams: every watch ends cleanly at once, with no event.
        self.end_watches_at_once = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> FakeKubernetes:
        fake = self

        class Handler(_Handler):
            server_double = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_watches()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        if self.pruned and not self.allow_pruning and exc[0] is None:
            raise AssertionError(
                f"the API server would have dropped these fields: {', '.join(self.pruned)}"
            )

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` talking to this server."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    # -- test controls ---------------------------------------------------------------------------

    def fail_next(self, method: str, path_pattern: str, status: int = 500, times: int = 1) -> None:
        """Makes the next `times` requests `method` on a path matching `path_pattern` fail."""
        with self._cond:
            self._faults.append([method.upper(), re.compile(path_pattern), status, times])

    def drop_watches(self) -> None:
        """Ends every open watch and log stream (like a load balancer cutting idle connections)."""
        with self._cond:
            self._watch_generation += 1
            self._log_generation += 1
            self._cond.notify_all()

    def run_in_background(self, function: Callable[[], None]) -> None:
        """Runs `function` in a daemon thread (a controller scenario)."""
        thread = threading.Thread(target=function, daemon=True)
        thread.start()
        self._threads.append(thread)

    def set_condition(
        self, namespace: str, name: str, condition_type: str, reason: str = "", message: str = "",
        status: str = "True",
    ) -> None:
        """Appends a condition (status True; the earlier ones of other types turn False).

        With `status="False"` the latest condition of that type turns False instead (Kueue
        resuming a suspended job).
        """
        with self._cond:
            job = self.jobs.get((namespace, name))
            if job is None:
                return
            conditions = job.setdefault("status", {}).setdefault("conditions", [])
            if status == "False":
                for condition in conditions:
                    if condition["type"] == condition_type:
                        condition["status"] = "False"
                self._touch(job, "MODIFIED")
                return
            for condition in conditions:
                if condition["type"] != "Created":
                    condition["status"] = "False"
            conditions.append(
                {
                    "type": condition_type,
                    "status": "True",
                    "reason": reason or f"{job['kind']}{condition_type}",
                    "message": message or f"{job['kind']} {name} is {condition_type.lower()}.",
                    "lastUpdateTime": _now(),
                    "lastTransitionTime": _now(),
                }
            )
            self._touch(job, "MODIFIED")

    def add_pod(
        self, namespace: str, job_name: str, replica_type: str, index: int, phase: str = "Running"
    ) -> str:
        """Creates the pod the operator would create for one replica and returns its name.

        `replica_type` is a PyTorchJob's `Master`/`Worker`, or `node` for a TrainJob (whose JobSet
        names pods `<job>-node-0-<index>-<suffix>` and labels them with the JobSet's labels).
        """
        if replica_type == "node":
            name = f"{job_name}-node-0-{index}-{uuid.uuid4().hex[:5]}"
            labels = {
                "jobset.sigs.k8s.io/jobset-name": job_name,
                "jobset.sigs.k8s.io/replicatedjob-name": "node",
                "jobset.sigs.k8s.io/job-index": "0",
                "batch.kubernetes.io/job-completion-index": str(index),
            }
            container = "node"
        else:
            name = f"{job_name}-{replica_type.lower()}-{index}"
            labels = {
                "training.kubeflow.org/job-name": job_name,
                "training.kubeflow.org/replica-type": replica_type.lower(),
                "training.kubeflow.org/replica-index": str(index),
            }
            container = "pytorch"
        with self._cond:
            self.pods[(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": str(self._next_version()),
                    "labels": labels,
                },
                "spec": {"containers": [{"name": container, "image": "trainer"}]},
                "status": {
                    "phase": phase,
                    "containerStatuses": [
                        {
                            "name": container,
                            "ready": phase == "Running",
                            "restartCount": 0,
                            "image": "trainer",
                            "imageID": "",
                            "state": {"running": {"startedAt": _now()}}
                            if phase == "Running"
                            else {"waiting": {"reason": "ContainerCreating"}},
                        }
                    ],
                },
            }
            self.logs.setdefault((namespace, name), [])
            self._cond.notify_all()
        return name

    def log(self, namespace: str, pod: str, *lines: str) -> None:
        """Appends lines to a pod's container log."""
        with self._cond:
            for line in lines:
                self.logs.setdefault((namespace, pod), []).append((_now(), line))
                time.sleep(0.000002)  # distinct timestamps
            self._cond.notify_all()

    def restart_container(self, namespace: str, pod: str, exit_code: int,
                          message: str | None = None) -> None:
        """The container failed and was restarted (restartPolicy OnFailure): a fresh log.

        `message`: what the container wrote to its termination message file.
        """
        with self._cond:
            status = self.pods[(namespace, pod)]["status"]["containerStatuses"][0]
            status["lastState"] = {
                "terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": _now(),
                               "startedAt": _now(), **({"message": message} if message else {})}
            }
            status["restartCount"] += 1
            self.previous_logs[(namespace, pod)] = self.logs.get((namespace, pod), [])
            self.logs[(namespace, pod)] = []
            # The old container's log stream ends with it.
            self._log_generation += 1
            self._cond.notify_all()

    def finish_pod(self, namespace: str, pod: str, exit_code: int = 0,
                   message: str | None = None) -> None:
        """The pod's container ended with `exit_code`.

        `message`: its termination message (`state.terminated.message`), as the kubelet reads it
        from the container's `terminationMessagePath`.
        """
        with self._cond:
            record = self.pods[(namespace, pod)]
            record["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            record["status"]["containerStatuses"][0]["state"] = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": _now(),
                    "finishedAt": _now(),
                    **({"message": message} if message else {}),
                }
            }
            self._cond.notify_all()

    def trainer_status_url(self, namespace: str, name: str) -> str:
        """`KUBEFLOW_TRAINER_STATUS_URL` for TrainJob `name`'s pods (the Trainer injects it)."""
        return (f"{self.url}/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/"
                f"trainjobs/{name}/status")

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Writes an object's whole `status` (as a controller does through the subresource)."""
        with self._cond:
            found = self.jobs.get((namespace, name))
            if found is None:
                return
            found["status"] = copy.deepcopy(status)
            self._touch(found, "MODIFIED")

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of the stored job, or None."""
        with self._cond:
            found = self.jobs.get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    # -- internals -------------------------------------------------------------------------------

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _touch(self, job: dict[str, Any], event_type: str) -> None:
        version = self._next_version()
        job["metadata"]["resourceVersion"] = str(version)
        self.events.append((version, event_type, copy.deepcopy(job)))
        self._cond.notify_all()

    def _fault(self, method: str, path: str) -> int | None:
        with self._cond:
            for fault in self._faults:
                if fault[0] == method and fault[1].search(path) and fault[3] > 0:
                    fault[3] -= 1
                    return fault[2]
        return None


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DOMAIN_PREFIXED_PATH = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[^/]\S*$"
)
# torch plugin (trainer v2.3 pkg/constants: TorchRunReservedEnvNames).
TORCH_RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
                      "PET_MASTER_PORT")
# training-operator v1.9 pkg/common/util/webhooks.go: supportedJobControllers.
SUPPORTED_MANAGERS = ("kubeflow.org/training-operator", "kueue.x-k8s.io/multikueue")


def _vendored_runtime() -> dict[str, Any]:
    import yaml

    from support.structural import CRDS

    return yaml.safe_load((CRDS / "torch_distributed_runtime.yaml").read_text())


def pytorchjob_webhook_problems(job: dict[str, Any]) -> list[str]:
    """`validatePyTorchJob` of training-operator v1.9 (`tests/crds/pytorchjob_webhook.go.txt`).

    Rule by rule, in the order the Go code checks them, with its field paths and messages.
    """
    problems = []
    name = job.get("metadata", {}).get("name", "")
    if len(name) > 63 or not _DNS1035_LABEL.match(name):
        problems.append(
            f'metadata.name: Invalid value: "{name}": should match: a DNS-1035 label must '
            "consist of lower case alphanumeric characters or '-', start with an alphabetic "
            "character, and end with an alphanumeric character"
        )
    spec = job.get("spec") or {}
    manager = (spec.get("runPolicy") or {}).get("managedBy")
    if manager is not None and manager not in SUPPORTED_MANAGERS:
        problems.append(f'spec.runPolicy.managedBy: Unsupported value: "{manager}"')
    replica_specs = spec.get("pytorchReplicaSpecs")
    if spec.get("elasticPolicy") is not None:
        if "Worker" not in (replica_specs or {}):
            problems.append("spec.pytorchReplicaSpecs[Worker]: Required value: must be configured "
                            "if elastic policy is used")
        if (spec["elasticPolicy"].get("nProcPerNode") is not None
                and spec.get("nprocPerNode") is not None):
            problems.append("spec.elasticPolicy.nProcPerNode: Forbidden: must not be used with "
                            "spec.nprocPerNode")
    if replica_specs is None:
        problems.append("spec.pytorchReplicaSpecs: Required value: must be required")
    for replica_type, replica in (replica_specs or {}).items():
        path = f"spec.pytorchReplicaSpecs[{replica_type}]"
        if replica_type not in ("Master", "Worker"):
            problems.append(f'{path}: Unsupported value: "{replica_type}"')
        containers = (((replica or {}).get("template") or {}).get("spec") or {}).get(
            "containers") or []
        if not containers:
            problems.append(f"{path}.template.spec.containers: Required value: must be specified")
        for index, container in enumerate(containers):
            if not container.get("image"):
                problems.append(f"{path}.template.spec.containers[{index}].image: Required value: "
                                "must be required")
        if not any(container.get("name") == "pytorch" for container in containers):
            problems.append(f"{path}.template.spec.containers: Required value: must have at "
                            "least one container with name pytorch")
        replicas = (replica or {}).get("replicas")
        if replica_type == "Master" and replicas != 1:
            problems.append(f"{path}.replicas: Forbidden: must be 1")
        elif replica_type != "Master" and replicas is not None and replicas < 1:
            problems.append(f"{path}.replicas: Forbidden: must be at least 1")
    return problems


def trainjob_webhook_problems(job: dict[str, Any], runtimes: dict[str, dict]) -> list[str]:
    """The TrainJob validating webhook of trainer v2.3, as far as kftune's TrainJobs reach it.

    `ClusterTrainingRuntime.ValidateObjects` (the runtime must exist), the torch plugin's
    `Validate` (no reserved PET_* env in `trainer.env`) and the jobset plugin's runtime patch
    checks (a domain-prefixed `manager`; patched replicated jobs and containers must exist in the
    runtime; no env on the `node` container through a patch).
    """
    spec = job.get("spec") or {}
    ref = spec.get("runtimeRef") or {}
    runtime = runtimes.get(ref.get("name", "")) if ref.get(
        "kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime" else None
    if runtime is None:
        return [
            f'spec.RuntimeRef: Invalid value: "{ref.get("name")}": '
            f'clustertrainingruntimes.trainer.kubeflow.org "{ref.get("name")}" not found: '
            "specified clusterTrainingRuntime must be created before the TrainJob is created"
        ]
    problems = []
    reserved = sorted({env.get("name") for env in (spec.get("trainer") or {}).get("env") or []}
                      & set(TORCH_RESERVED_ENV))
    if reserved:
        problems.append(f"spec.trainer.env: Invalid value: must not have reserved envs, invalid "
                        f"envs configured: {reserved}")
    containers = {
        replicated["name"]: {c["name"] for c in replicated["template"]["spec"]["template"]["spec"]
                             .get("containers", [])}
        for replicated in runtime["spec"]["template"]["spec"]["replicatedJobs"]
    }
    for patch in spec.get("runtimePatches") or []:
        if not _DOMAIN_PREFIXED_PATH.match(patch.get("manager", "")):
            problems.append(f'spec.runtimePatches.manager: Invalid value: "{patch.get("manager")}"'
                            ": must be a domain-prefixed path (such as \"acme.io/foo\")")
        template = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
        for replicated in (template.get("spec") or {}).get("replicatedJobs") or []:
            if replicated["name"] not in containers:
                problems.append("spec.runtimePatches: Invalid value: must not have replicated job "
                                "that doesn't exist in the runtime job template")
                continue
            pod = (((replicated.get("template") or {}).get("spec") or {}).get("template")
                   or {}).get("spec") or {}
            for container in pod.get("containers") or []:
                if container["name"] not in containers[replicated["name"]]:
                    problems.append("spec.runtimePatches: Invalid value: must not have container "
                                    f"that doesn't exist in the runtime job {replicated['name']}")
                elif container.get("env") and container["name"] == "node":
                    problems.append("spec.runtimePatches: Invalid value: must not have envs for "
                                    "the dataset-initializer, model-initializer, node containers")
    return problems


_DNS1035_ISVC = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def llmisvc_webhook_problems(service: dict[str, Any]) -> list[str]:
    """`validateLoRAAdapters` of KServe v0.20 (`llm_inference_service_validation.go.txt`).

    The v1alpha2 validator, which the API server also calls for a v1alpha1 object (converted):
    every adapter has a name, not `.`/`..`, unique, and other than the base model's name
    (`spec.model.name`, else `metadata.name`).
    """
    model = (service.get("spec") or {}).get("model") or {}
    lora = model.get("lora") or {}
    problems = []
    base_name = model.get("name") or service["metadata"]["name"]
    seen: dict[str, int] = {}
    for index, adapter in enumerate(lora.get("adapters") or []):
        path = f"spec.model.lora.adapters[{index}].name"
        name = (adapter or {}).get("name") if isinstance(adapter, dict) else None
        if not name:
            problems.append(f"{path}: Required value: adapter name is required")
            continue
        if name in (".", ".."):
            problems.append(f'{path}: Invalid value: "{name}": adapter name must not include "." '
                            'or ".." (path traversal risk)')
            continue
        if name in seen:
            problems.append(f'{path}: Invalid value: "{name}": duplicate name (same as '
                            f"adapters[{seen[name]}])")
        else:
            seen[name] = index
        if name == base_name:
            problems.append(f'{path}: Invalid value: "{name}": adapter name must differ from base '
                            f'model name "{base_name}"')
    return problems


def _common_parent(paths: list[str]) -> str:
    parts = [path.strip("/").split("/") if path.strip("/") else [] for path in paths]
    common = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return "/" + "/".join(common)


def isvc_webhook_problems(service: dict[str, Any]) -> list[str]:
    """The InferenceService validator of KServe v0.20, as far as kftune's manifests reach it.

    `validateInferenceServiceName` and `validateMultipleStorageURIs`
    (`tests/crds/inference_service_validation.go.txt`); like the Go code, the first error only.
    """
    name = service["metadata"]["name"]
    if not _DNS1035_ISVC.match(name):
        return [f'the InferenceService "{name}" is invalid: a InferenceService name must consist '
                "of lower case alphanumeric characters or '-', and must start with alphabetical "
                'character. (e.g. "my-name" or "abc-123", regex used for validation is '
                "'[a-z]([-a-z0-9]*[a-z0-9])?')"]
    predictor = (service.get("spec") or {}).get("predictor") or {}
    storage_uris = predictor.get("storageUris")
    if storage_uris is not None and (predictor.get("model") or {}).get("storageUri") is not None:
        return ["Setting both StorageURI and StorageURIs is not supported."]
    paths = []
    for entry in storage_uris or []:
        mount = entry.get("mountPath", "/mnt/models")
        if not entry.get("uri"):
            return ["storage URI cannot be empty"]
        if mount == "/":
            return ["storage path cannot be empty"]
        if not mount.startswith("/"):
            return [f"storage path must be absolute: {mount}"]
        if ".." in mount:
            return [f"storage path cannot contain '..' for security reasons: {mount}"]
        if not entry["uri"].startswith("pvc://"):
            paths.append(mount)
    if len(paths) > 1 and _common_parent(paths) == "/":
        return [f"storage paths must have a common parent directory. Current paths: "
                f"[{' '.join(paths)}] have no common parent beyond root"]
    return []


def _serving_admission(plural: str, name: str,
                       stored: dict[str, Any]) -> tuple[int, str, dict | None]:
    """KServe's validating webhooks: LLMInferenceService answers 422 (a field.ErrorList),
    InferenceService 403 (a plain error), as controller-runtime passes them on."""
    if plural == "llminferenceservices":
        denied = llmisvc_webhook_problems(stored)
        if denied:
            return 422, ('admission webhook "llminferenceservice.kserve-webhook-server.v1alpha2.'
                         'validator" denied the request: LLMInferenceService.serving.kserve.io '
                         f'"{name}" is invalid: [{", ".join(denied)}]'), None
        return 201, "", stored
    denied = isvc_webhook_problems(stored)
    if denied:
        return 403, ('admission webhook "inferenceservice.kserve-webhook-server.validator" denied '
                     f"the request: {denied[0]}"), None
    return 201, "", stored


class _Handler(BaseHTTPRequestHandler):
    server_double: FakeKubernetes
    plural = "pytorchjobs"
    # Streamed bodies (watch, follow) are chunked, as the real server sends them: the client
    # reads them chunk by chunk. Every response closes its connection, to keep the server simple.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass

    def _error(self, code: int, reason: str, message: str) -> None:
        self._send(code, _status(code, reason, message))

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self, method: str) -> None:
        fake = self.server_double
        path = self.path
        parsed = urllib.parse.urlsplit(path)
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(parsed.query).items()}
        with fake._cond:
            fake.requests.append((method, self.path))
        status = fake._fault(method, parsed.path)
        if status is not None:
            self._error(status, "InternalError", f"injected failure for {method} {parsed.path}")
            return
        jobs = _JOBS.match(parsed.path)
        pods = _PODS.match(parsed.path)
        discovery = _DISCOVERY.match(parsed.path)
        runtimes = _RUNTIMES.match(parsed.path)
        trainer_status = _TRAINER_STATUS.match(parsed.path)
        if trainer_status and method == "POST" and "trainjobs" in fake.serves:
            return self._trainer_status(*trainer_status.groups())
        if discovery and method == "GET":
            return self._discovery(discovery.group(1))
        if runtimes and method == "GET" and "trainjobs" in fake.serves:
            return self._runtimes(runtimes.group(1))
        if jobs and jobs.group(3) in fake.serves and KINDS[jobs.group(3)][0] == jobs.group(1):
            _, namespace, self.plural, name = jobs.groups()
            if method == "POST" and name is None:
                return self._create_job(namespace)
            if method == "GET" and name is None:
                if query.get("watch") in ("true", "True", "1"):
                    return self._watch_jobs(namespace, query)
                return self._list_jobs(namespace, query)
            if method == "GET":
                return self._get_job(namespace, name)
            if method == "DELETE" and name is not None:
                return self._delete_job(namespace, name)
            if method == "PUT" and name is not None:
                return self._replace_job(namespace, name)
        if pods and method == "GET":
            namespace, name, log = pods.groups()
            if name is None:
                return self._list_pods(namespace, query)
            if log:
                return self._pod_log(namespace, name, query)
            return self._get_pod(namespace, name)
        self._error(404, "NotFound", f"the server could not find the requested resource {path}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PUT(self) -> None:
        self._route("PUT")

    # -- pytorchjobs -----------------------------------------------------------------------------

    def _discovery(self, group_version: str) -> None:
        fake = self.server_double
        served = [plural for plural in fake.serves if KINDS[plural][0] == group_version]
        if not served:
            return self._error(404, "NotFound", "the server could not find the requested resource")
        resources = [
            {"name": plural, "singularName": KINDS[plural][1].lower(), "namespaced": True,
             "kind": KINDS[plural][1],
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for plural in served
        ]
        if group_version.startswith("trainer."):
            resources.append({"name": "clustertrainingruntimes",
                              "singularName": "clustertrainingruntime", "namespaced": False,
                              "kind": "ClusterTrainingRuntime", "verbs": ["get", "list"]})
        self._send(200, {"kind": "APIResourceList", "apiVersion": "v1",
                         "groupVersion": group_version, "resources": resources})

    def _runtimes(self, name: str | None) -> None:
        fake = self.server_double
        if fake.forbid_runtime_list:
            return self._error(403, "Forbidden", "clustertrainingruntimes.trainer.kubeflow.org is "
                               "forbidden: cannot list resource at the cluster scope")
        if name is None:
            return self._send(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1",
                                    "kind": "ClusterTrainingRuntimeList", "metadata": {},
                                    "items": list(fake.runtimes.values())})
        if name not in fake.runtimes:
            return self._error(404, "NotFound",
                               f'clustertrainingruntimes.trainer.kubeflow.org "{name}" not found')
        self._send(200, fake.runtimes[name])

    @property
    def _resource(self) -> str:
        return f"{self.plural}.{KINDS[self.plural][0].split('/')[0]}"

    def _admitted(self, body: dict[str, Any], name: str) -> dict[str, Any] | None:
        """The object as stored, or None after answering with the admission's refusal."""
        code, message, stored = self._admission_problems(body)
        if stored is None:
            reason = {400: "BadRequest", 403: "Forbidden", 422: "Invalid"}[code]
            self._send(code, _status(code, reason, message, {"name": name}))
        return stored

    def _admission_problems(self, body: dict[str, Any]) -> tuple[int, str, dict | None]:
        """(status, message, the object as stored) after schema, pruning and webhook."""
        fake = self.server_double
        group_version, kind, _, _ = KINDS[self.plural]
        crd = fake.crd_files[self.plural]
        name = (body.get("metadata") or {}).get("name", "")
        if body.get("apiVersion") != group_version or body.get("kind") != kind:
            return 400, "the API version in the data does not match", None
        if not name or len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
            return 422, (
                f'{kind}.{group_version.split("/")[0]} "{name}" is invalid: metadata.name: '
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.'"), None
        from support.structural import admit

        stored, dropped, errors = admit(body, crd, group_version.split("/")[1])
        if errors:
            return 422, (f'{kind}.{group_version.split("/")[0]} "{name}" is invalid: '
                         + "; ".join(errors)), None
        with fake._cond:
            fake.pruned += [f"{kind} {name}: {path}" for path in dropped]
        if self.plural in SERVING:
            return _serving_admission(self.plural, name, stored)
        if self.plural == "pytorchjobs":
            denied = pytorchjob_webhook_problems(stored)
            webhook = "validator.pytorchjob.training-operator.kubeflow.org"
        else:
            denied = trainjob_webhook_problems(stored, fake.runtimes)
            webhook = "validator.trainjob.trainer.kubeflow.org"
        if denied:
            # What the operators' validating webhooks answer (controller-runtime: 403).
            return 403, (f'admission webhook "{webhook}" denied the request: '
                         f"{', '.join(denied)}"), None
        return 201, "", stored

    def _trainer_status(self, namespace: str, name: str) -> None:
        """A pod's progress report, as the Trainer's status server takes it (KEP-2779).

        It checks the bearer token, then writes `status.trainerStatus` of the TrainJob, which
        must pass the CRD's schema (the API server validates the status subresource).
        """
        fake = self.server_double
        if self.headers.get("Authorization") != f"Bearer {fake.trainer_status_token}":
            return self._error(401, "Unauthorized", "a valid bearer token is required")
        payload = self._body()
        status = payload.get("trainerStatus") if isinstance(payload, dict) else None
        if not isinstance(status, dict):
            return self._error(400, "BadRequest", "the body must hold trainerStatus")
        from support.structural import admit

        with fake._cond:
            job = fake.jobs.get((namespace, name))
            if job is None:
                return self._error(404, "NotFound", f'trainjobs "{name}" not found')
            updated = copy.deepcopy(job)
            updated.setdefault("status", {})["trainerStatus"] = status
            stored, dropped, errors = admit(updated, fake.crd_files["trainjobs"], "v1alpha1")
            if errors or dropped:
                return self._error(422, "Invalid", "; ".join(errors + dropped))
            job["status"] = stored["status"]
            fake.trainer_statuses.append(copy.deepcopy(stored["status"]["trainerStatus"]))
            fake._touch(job, "MODIFIED")
        self._send(200, {"status": "ok"})

    def _create_job(self, namespace: str) -> None:
        fake = self.server_double
        body = self._body()
        metadata = body.get("metadata") or {}
        name = metadata.get("name", "")
        if metadata.get("namespace") not in (None, namespace):
            return self._error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        stored = self._admitted(body, name)
        if stored is None:
            return None
        with fake._cond:
            if (namespace, name) in fake.jobs:
                return self._send(
                    409,
                    _status(409, "AlreadyExists", f'{self._resource} "{name}" already exists',
                            {"name": name, "kind": self.plural}),
                )
            job = copy.deepcopy(stored)
            if self.plural in SERVING:
                job.pop("status", None)  # the status subresource: only the controller writes it
            job["metadata"].update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=_now(),
                generation=1,
            )
            fake.jobs[(namespace, name)] = job
            fake.created.append(name)
            fake._touch(job, "ADDED")
            response = copy.deepcopy(job)
        self._send(201, response)
        if fake.on_create is not None:
            scenario = fake.on_create
            fake.run_in_background(lambda: scenario(fake, copy.deepcopy(response)))

    def _replace_job(self, namespace: str, name: str) -> None:
        """PUT: the whole object again, at the stored resourceVersion (an update)."""
        fake = self.server_double
        body = self._body()
        metadata = body.get("metadata") or {}
        if metadata.get("name") != name or metadata.get("namespace") not in (None, namespace):
            return self._error(400, "BadRequest", "the name or namespace of the provided object "
                               "does not match the request")
        stored = self._admitted(body, name)
        if stored is None:
            return None
        with fake._cond:
            current = fake.jobs.get((namespace, name))
            if current is None or current["kind"] != KINDS[self.plural][1]:
                return self._error(404, "NotFound", f'{self._resource} "{name}" not found')
            version = metadata.get("resourceVersion")
            if not version:
                return self._error(422, "Invalid", f'{KINDS[self.plural][1]} "{name}" is invalid: '
                                   "metadata.resourceVersion: Invalid value: 0x0: must be "
                                   "specified for an update")
            if version != current["metadata"]["resourceVersion"]:
                return self._error(409, "Conflict", f'Operation cannot be fulfilled on '
                                   f'{self._resource} "{name}": the object has been modified; '
                                   "please apply your changes to the latest version and try again")
            job = copy.deepcopy(stored)
            job["status"] = copy.deepcopy(current.get("status") or {})
            if not job["status"]:
                job.pop("status")
            kept = {key: current["metadata"][key] for key in
                    ("uid", "creationTimestamp", "generation", "namespace")}
            if job.get("spec") != current.get("spec"):
                kept["generation"] += 1
            job["metadata"].update(kept)
            fake.jobs[(namespace, name)] = job
            fake.replaced.append(name)
            fake._touch(job, "MODIFIED")
            response = copy.deepcopy(job)
        self._send(200, response)
        if fake.on_replace is not None:
            scenario = fake.on_replace
            fake.run_in_background(lambda: scenario(fake, copy.deepcopy(response)))

    def _get_job(self, namespace: str, name: str) -> None:
        job = self.server_double.job(namespace, name)
        if job is None or job["kind"] != KINDS[self.plural][1]:
            return self._error(404, "NotFound", f'{self._resource} "{name}" not found')
        self._send(200, job)

    def _delete_job(self, namespace: str, name: str) -> None:
        fake = self.server_double
        with fake._cond:
            job = fake.jobs.get((namespace, name))
            if job is None or job["kind"] != KINDS[self.plural][1]:
                return self._error(404, "NotFound", f'{self._resource} "{name}" not found')
            fake.jobs.pop((namespace, name))
            fake.deleted.append(name)
            fake._touch(job, "DELETED")
            for key in [key for key in fake.pods if key[1].startswith(f"{name}-")]:
                fake.pods.pop(key)
            fake._cond.notify_all()
        self._send(200, _status(200, "", "") | {"status": "Success"})

    def _selected(self, namespace: str, query: dict[str, str]) -> Callable[[dict], bool]:
        field = query.get("fieldSelector", "")
        wanted_name = field.split("=", 1)[1] if field.startswith("metadata.name=") else None

        kind = KINDS[self.plural][1]

        def check(job: dict) -> bool:
            meta = job["metadata"]
            return (job["kind"] == kind and meta["namespace"] == namespace
                    and wanted_name in (None, meta["name"]))

        return check

    def _list_jobs(self, namespace: str, query: dict[str, str]) -> None:
        fake = self.server_double
        check = self._selected(namespace, query)
        with fake._cond:
            items = [copy.deepcopy(job) for job in fake.jobs.values() if check(job)]
            version = str(fake._version)
        self._send(
            200,
            {
                "apiVersion": KINDS[self.plural][0],
                "kind": f"{KINDS[self.plural][1]}List",
                "metadata": {"resourceVersion": version},
                "items": items,
            },
        )

    def _watch_jobs(self, namespace: str, query: dict[str, str]) -> None:
        fake = self.server_double
        check = self._selected(namespace, query)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 3600)
        self._start_stream("application/json")
        if fake.end_watches_at_once:
            self._end_stream()
            return
        with fake._cond:
            generation = fake._watch_generation
            if query.get("resourceVersion"):
                since = int(query["resourceVersion"])
                pending: list[tuple[str, dict]] = []
            else:  # no version: the current objects first, as ADDED
                since = fake._version
                pending = [
                    ("ADDED", copy.deepcopy(job)) for job in fake.jobs.values() if check(job)
                ]
        try:
            while True:
                for event_type, obj in pending:
                    line = json.dumps({"type": event_type, "object": obj}) + "\n"
                    self._chunk(line.encode())
                with fake._cond:
                    while True:
                        if fake._watch_generation != generation:
                            return  # dropped: no clean end of the stream
                        if time.monotonic() > deadline:
                            self._end_stream()
                            return
                        fresh = [event for event in fake.events if event[0] > since]
                        if fresh:
                            break
                        fake._cond.wait(timeout=0.05)
                    since = fresh[-1][0]
                    pending = [(kind, obj) for _, kind, obj in fresh if check(obj)]
        except (BrokenPipeError, ConnectionResetError):
            return

    # -- pods ------------------------------------------------------------------------------------

    def _list_pods(self, namespace: str, query: dict[str, str]) -> None:
        fake = self.server_double
        selector = query.get("labelSelector", "")
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        with fake._cond:
            items = [
                copy.deepcopy(pod)
                for (pod_namespace, _), pod in fake.pods.items()
                if pod_namespace == namespace
                and all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())
            ]
        self._send(
            200,
            {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
             "items": items},
        )

    def _get_pod(self, namespace: str, name: str) -> None:
        fake = self.server_double
        with fake._cond:
            pod = copy.deepcopy(fake.pods.get((namespace, name)))
        if pod is None:
            return self._error(404, "NotFound", f'pods "{name}" not found')
        self._send(200, pod)

    def _pod_log(self, namespace: str, name: str, query: dict[str, str]) -> None:
        fake = self.server_double
        key = (namespace, name)
        with fake._cond:
            pod = fake.pods.get(key)
            if pod is None:
                return self._error(404, "NotFound", f'pods "{name}" not found')
            if pod["status"]["phase"] == "Pending":
                return self._error(
                    400,
                    "BadRequest",
                    f'container "{pod["spec"]["containers"][0]["name"]}" in pod "{name}" is '
                    "waiting to start: ContainerCreating",
                )
            previous = query.get("previous") in ("true", "True")
            source = fake.previous_logs if previous else fake.logs
            lines = list(source.get(key, []))
        stamps = query.get("timestamps") in ("true", "True")

        def render(entries: list[tuple[str, str]]) -> bytes:
            return "".join(
                f"{stamp} {line}\n" if stamps else f"{line}\n" for stamp, line in entries
            ).encode()

        if query.get("follow") not in ("true", "True"):
            tail = int(query["tailLines"]) if query.get("tailLines") else None
            if tail is not None:
                lines = lines[-tail:] if tail else []
            return self._send(200, render(lines), "text/plain")
        self._start_stream("text/plain")
        with fake._cond:
            generation = fake._log_generation
        sent = 0
        try:
            while True:
                with fake._cond:
                    while True:
                        current = fake.logs.get(key, [])
                        pod = fake.pods.get(key)
                        done = pod is None or pod["status"]["phase"] in ("Succeeded", "Failed")
                        if len(current) > sent or done or fake._log_generation != generation:
                            break
                        fake._cond.wait(timeout=0.05)
                    chunk = current[sent:]
                    sent = len(current)
                if chunk:
                    self._chunk(render(chunk))
                if fake._log_generation != generation:
                    return  # dropped
                if done:
                    self._end_stream()
                    return
        except (BrokenPipeError, ConnectionResetError):
            return
