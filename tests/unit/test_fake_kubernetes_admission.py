"""The API server double refuses what the real server and the operators' webhooks refuse.

The PyTorchJob cases are those of training-operator v1.9's own webhook test
(`tests/crds/pytorchjob_webhook_test.go.txt`, `TestValidateV1PyTorchJob`), each with the field
paths that test expects: the double's rules are checked against the operator's expectations, not
against a copy of kftune's. The TrainJob cases follow trainer v2.3's admission code (the runtime
must exist, the torch plugin's reserved env, the jobset plugin's runtime patch rules). The schema
cases show the vendored CRDs at work: a wrong type is a 422, an unknown field is dropped (and a
test that makes the server drop a field fails).
"""

import copy
import dataclasses
import re
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from support.fake_kubernetes import (
    FakeKubernetes,
    pytorchjob_webhook_problems,
    trainjob_webhook_problems,
)
from support.structural import CRDS

IMAGE = "docker.io/kubeflowkatib/pytorch-mnist:v1beta1-45c5727"


def replica(replicas=1, containers=None):
    spec = {"restartPolicy": "OnFailure", "template": {"spec": {"containers": (
        [{"name": "pytorch", "image": IMAGE}] if containers is None else containers)}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return spec


VALID_SPECS = {"Master": replica(), "Worker": replica()}


def pytorchjob(name="test", **spec):
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name},
            "spec": {"pytorchReplicaSpecs": copy.deepcopy(VALID_SPECS), **spec}}


@dataclasses.dataclass
class Case:
    name: str
    job: dict[str, Any]
    expected: list[str]  # field paths of the errors, as the operator's test lists them


WORKER = "spec.pytorchReplicaSpecs[Worker]"
OPERATOR_CASES = [
    Case("valid PyTorchJob", pytorchjob(runPolicy={"managedBy": "kubeflow.org/training-operator"},
                                        elasticPolicy={"rdzvBackend": "c10d"}), []),
    Case("pytorchJob name does not meet DNS1035", pytorchjob(name="0-test"), ["metadata.name"]),
    Case("no containers", pytorchjob(pytorchReplicaSpecs={"Worker": replica(None, [])}),
         [f"{WORKER}.template.spec.containers"] * 2),
    Case("image is empty", pytorchjob(pytorchReplicaSpecs={
        "Worker": replica(None, [{"name": "pytorch", "image": ""}])}),
        [f"{WORKER}.template.spec.containers[0].image"]),
    Case("pytorchJob default container name doesn't present", pytorchjob(pytorchReplicaSpecs={
        "Worker": replica(None, [{"name": "", "image": IMAGE}])}),
        [f"{WORKER}.template.spec.containers"]),
    Case("the number of replicas in masterReplica is other than 1",
         pytorchjob(pytorchReplicaSpecs={"Master": replica(2)}),
         ["spec.pytorchReplicaSpecs[Master].replicas"]),
    Case("Spec.ElasticPolicy.NProcPerNode are set",
         pytorchjob(elasticPolicy={"nProcPerNode": 1}), []),
    Case("Spec.NprocPerNode and Spec.ElasticPolicy.NProcPerNode are set",
         pytorchjob(elasticPolicy={"nProcPerNode": 1}, nprocPerNode="1"),
         ["spec.elasticPolicy.nProcPerNode"]),
    Case("attempt to set unsupported managedBy controller name gets rejected",
         pytorchjob(runPolicy={"managedBy": "other-job-controller"}),
         ["spec.runPolicy.managedBy"]),
    Case("attempt to configure elasticPolicy when no worker is configured",
         pytorchjob(pytorchReplicaSpecs={"Master": replica()}, elasticPolicy={"nProcPerNode": 1}),
         [WORKER]),
    Case("attempt to configure worker with 0 replicas",
         pytorchjob(pytorchReplicaSpecs={"Master": replica(), "Worker": replica(0)}),
         [f"{WORKER}.replicas"]),
]


@pytest.mark.parametrize("case", OPERATOR_CASES, ids=[case.name for case in OPERATOR_CASES])
def test_pytorchjob_webhook_rules_match_the_operators_own_test_cases(case):
    paths = [problem.split(":", 1)[0] for problem in pytorchjob_webhook_problems(case.job)]
    assert sorted(paths) == sorted(case.expected)


def test_every_operator_test_case_is_covered():
    # The operator's create cases (its one update case is about a field kftune never updates).
    source = (CRDS / "pytorchjob_webhook_test.go.txt").read_text()
    names = set(re.findall(r'^\t\t"(.+)": \{$', source, flags=re.MULTILINE))
    names.discard("attempt to update the managedBy field gets rejected")
    assert names == {case.name for case in OPERATOR_CASES}


RUNTIME = {"metadata": {"name": "torch-distributed"}, "spec": {"template": {"spec": {
    "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {
        "containers": [{"name": "node", "image": "pytorch"}]}}}}}]}}}}


def trainjob(runtime="torch-distributed", env=(), patches=None):
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "test"},
            "spec": {"runtimeRef": {"name": runtime},
                     "trainer": {"env": [{"name": name, "value": "1"} for name in env]},
                     "runtimePatches": patches or []}}


def patch(manager="kftune.dev/launcher", job="node", container="node", env=None):
    return {"manager": manager, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": job, "template": {"spec": {"template": {"spec": {"containers": [
            {"name": container, **({"env": env} if env else {})}]}}}}}]}}}}


TRAINJOB_CASES = [
    Case("valid", trainjob(patches=[patch()]), []),
    Case("runtime missing", trainjob(runtime="nope"), ["spec.RuntimeRef"]),
    Case("reserved torch env", trainjob(env=["PET_NNODES", "NCCL_DEBUG"]), ["spec.trainer.env"]),
    Case("manager not domain-prefixed", trainjob(patches=[patch(manager="kftune")]),
         ["spec.runtimePatches.manager"]),
    Case("patched replicated job not in the runtime", trainjob(patches=[patch(job="launcher")]),
         ["spec.runtimePatches"]),
    Case("patched container not in the runtime", trainjob(patches=[patch(container="pytorch")]),
         ["spec.runtimePatches"]),
    Case("env on the node container through a patch",
         trainjob(patches=[patch(env=[{"name": "A", "value": "1"}])]), ["spec.runtimePatches"]),
]


@pytest.mark.parametrize("case", TRAINJOB_CASES, ids=[case.name for case in TRAINJOB_CASES])
def test_trainjob_webhook_rules(case):
    problems = trainjob_webhook_problems(case.job, {"torch-distributed": RUNTIME})
    assert sorted(problem.split(":", 1)[0] for problem in problems) == case.expected


def create(fake, body, plural="pytorchjobs"):
    group, version = body["apiVersion"].split("/")
    return client.CustomObjectsApi(fake.api_client()).create_namespaced_custom_object(
        group, version, "team-a", plural, body)


def test_a_value_of_the_wrong_type_is_refused_by_the_schema():
    body = pytorchjob(nprocPerNode=2)  # the CRD says string
    with FakeKubernetes() as fake, pytest.raises(ApiException) as caught:
        create(fake, body)
    assert caught.value.status == 422
    assert "spec.nprocPerNode: Invalid value: 2 is not of type 'string'" in caught.value.body


def test_an_unknown_field_is_pruned_and_fails_the_test_that_sent_it():
    body = pytorchjob(nprocsPerNode="2")  # a typo the server drops without a word
    fake = FakeKubernetes()
    dropped = "would have dropped these fields: .*spec.nprocsPerNode"
    with pytest.raises(AssertionError, match=dropped):
        with fake:
            stored = create(fake, body)
            assert "nprocsPerNode" not in stored["spec"]


def test_a_trainjob_for_a_runtime_the_cluster_lacks_is_denied():
    with FakeKubernetes() as fake, pytest.raises(ApiException) as caught:
        create(fake, trainjob(runtime="torch-tuned"), "trainjobs")
    assert caught.value.status == 403
    assert "specified clusterTrainingRuntime must be created before" in caught.value.body


def test_a_kind_the_cluster_does_not_serve_is_not_found():
    with FakeKubernetes(serves=("pytorchjobs",)) as fake, pytest.raises(ApiException) as caught:
        create(fake, trainjob(), "trainjobs")
    assert caught.value.status == 404
