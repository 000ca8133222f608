#!/usr/bin/env bash
# Refreshes the vendored CRDs (and the sources the API server double's rules come from) from
# local clones of kubeflow/training-operator, kubeflow/trainer and (optionally) kserve/kserve, at
# the tags named below, and records tag and commit in README.md.
#
#   tests/crds/refresh.sh TRAINING_OPERATOR_GIT_DIR TRAINER_GIT_DIR [V1_TAG] [V2_TAG] \
#       [KSERVE_GIT_DIR] [KSERVE_TAG]
#
# The git directories may be bare (e.g. from `git clone --mirror`). Without KSERVE_GIT_DIR the
# KServe files are left as they are (and README.md keeps their recorded tag and commit).
set -euo pipefail
v1_git=$1 v2_git=$2 v1_tag=${3:-v1.9.0} v2_tag=${4:-v2.3.0}
kserve_git=${5:-} kserve_tag=${6:-v0.20.0}
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
if [ -n "$kserve_git" ]; then
    show "$kserve_git" "$kserve_tag" config/crd/full/llmisvc/serving.kserve.io_llminferenceservices.yaml \
        > "$here/serving.kserve.io_llminferenceservices.yaml"
    show "$kserve_git" "$kserve_tag" config/crd/full/serving.kserve.io_inferenceservices.yaml \
        > "$here/serving.kserve.io_inferenceservices.yaml"
    show "$kserve_git" "$kserve_tag" pkg/apis/serving/v1alpha2/llm_inference_service_validation.go \
        > "$here/llm_inference_service_validation.go.txt"
    show "$kserve_git" "$kserve_tag" pkg/apis/serving/v1beta1/inference_service_validation.go \
        > "$here/inference_service_validation.go.txt"
    kserve_commit=$(git --git-dir="$kserve_git" rev-parse "$kserve_tag^{commit}")
else  # keep what README.md recorded for the files left in place
    kserve_tag=$(sed -n 's/^| serving.kserve.io_llminferenceservices.yaml.* | \([^ ]*\) | \([0-9a-f]*\) |$/\1/p' "$here/README.md")
    kserve_commit=$(sed -n 's/^| serving.kserve.io_llminferenceservices.yaml.* | \([^ ]*\) | \([0-9a-f]*\) |$/\2/p' "$here/README.md")
fi
v1_commit=$(git --git-dir="$v1_git" rev-parse "$v1_tag^{commit}")
v2_commit=$(git --git-dir="$v2_git" rev-parse "$v2_tag^{commit}")
cat > "$here/README.md" <<README
# Vendored CRDs and operator sources

What the Kubernetes API server double (\`tests/support/fake_kubernetes.py\`) admits by: each CRD's
\`openAPIV3Schema\` (structural pruning and validation, \`tests/support/structural.py\`), and the
operators' admission rules, transcribed from the sources kept here as \`.go.txt\`.

| file | from | tag | commit |
| --- | --- | --- | --- |
| kubeflow.org_pytorchjobs.yaml | kubeflow/training-operator manifests/base/crds/ | $v1_tag | $v1_commit |
| pytorchjob_webhook.go.txt, pytorchjob_webhook_test.go.txt | kubeflow/training-operator pkg/webhooks/pytorch/ | $v1_tag | $v1_commit |
| trainer.kubeflow.org_trainjobs.yaml, trainer.kubeflow.org_clustertrainingruntimes.yaml | kubeflow/trainer manifests/base/crds/ | $v2_tag | $v2_commit |
| torch_distributed_runtime.yaml | kubeflow/trainer manifests/base/runtimes/torch_distributed.yaml | $v2_tag | $v2_commit |
| torch_plugin.go.txt, jobset_plugin.go.txt | kubeflow/trainer pkg/runtime/framework/plugins/{torch/torch.go,jobset/jobset.go} | $v2_tag | $v2_commit |
| serving.kserve.io_llminferenceservices.yaml | kserve/kserve config/crd/full/llmisvc/ | $kserve_tag | $kserve_commit |
| serving.kserve.io_inferenceservices.yaml | kserve/kserve config/crd/full/ | $kserve_tag | $kserve_commit |
| llm_inference_service_validation.go.txt | kserve/kserve pkg/apis/serving/v1alpha2/ | $kserve_tag | $kserve_commit |
| inference_service_validation.go.txt | kserve/kserve pkg/apis/serving/v1beta1/ | $kserve_tag | $kserve_commit |

Refresh (from clones of the repositories; bare clones are fine):
\`tests/crds/refresh.sh TRAINING_OPERATOR_GIT_DIR TRAINER_GIT_DIR [V1_TAG] [V2_TAG] [KSERVE_GIT_DIR] [KSERVE_TAG]\`,
then run \`pytest tests/unit/test_fake_kubernetes_admission.py tests/unit/test_job_manifest.py tests/unit/test_deploy_model.py\`.
README
rm -f "$here/SOURCES.txt"
cat "$here/README.md"
