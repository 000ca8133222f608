#!/usr/bin/env bash
# Refreshes the vendored CRDs (and the sources the API server double's rules come from) from
# local clones of kubeflow/training-operator and kubeflow/trainer, at the tags named below, and
# records tag and commit in SOURCES.txt.
#
#   tests/crds/refresh.sh TRAINING_OPERATOR_GIT_DIR TRAINER_GIT_DIR [V1_TAG] [V2_TAG]
#
# The git directories may be bare (e.g. from `git clone --mirror`).
set -euo pipefail
v1_git=$1 v2_git=$2 v1_tag=${3:-v1.9.0} v2_tag=${4:-v2.3.0}
here=$(cd "$(dirname "$0")" && pwd)
show() { git --git-dir="$1" show "$2:$3"; }
show "$v1_git" "$v1_tag" manifests/base/crds/kubeflow.org_pytorchjobs.yaml \
    > "$here/kubeflow.org_pytorchjobs.yaml"
for source in pytorchjob_webhook pytorchjob_webhook_test; do
    show "$v1_git" "$v1_tag" "pkg/webhooks/pytorch/$source.go" > "$here/$source.go.txt"
done
for crd in trainjobs clustertrainingruntimes; do
    show "$v2_git" "$v2_tag" "manifests/base/crds/trainer.kubeflow.org_$crd.yaml" \
        > "$here/trainer.kubeflow.org_$crd.yaml"
done
show "$v2_git" "$v2_tag" manifests/base/runtimes/torch_distributed.yaml \
    > "$here/torch_distributed_runtime.yaml"
show "$v2_git" "$v2_tag" pkg/runtime/framework/plugins/torch/torch.go > "$here/torch_plugin.go.txt"
show "$v2_git" "$v2_tag" pkg/runtime/framework/plugins/jobset/jobset.go > "$here/jobset_plugin.go.txt"
{
    echo "kubeflow/training-operator $v1_tag $(git --git-dir="$v1_git" rev-parse "$v1_tag^{commit}")"
    echo "kubeflow/trainer $v2_tag $(git --git-dir="$v2_git" rev-parse "$v2_tag^{commit}")"
} > "$here/SOURCES.txt"
cat "$here/SOURCES.txt"
