"""`kftune launch --dry-run`: the manifest on stdout, and a warning when it cannot be applied."""

from dataclasses import dataclass

import pytest
import yaml
from kftune.components.common import images
from kftune.pipelines.cli import main

ARGS = ["launch", "--dry-run", "--model-uri", "s3://b/model", "--dataset-uri", "s3://b/data",
        "--output-uri", "s3://b/out"]


@dataclass
class Case:
    name: str
    flags: list[str]
    image: str
    warning: str  # "": none


CASES = [
    Case("no image given: the placeholder", [], images.trainer_image(images.UNSET_REGISTRY),
         "kftune launch: warning: this manifest cannot be applied as is: `--image` names no "
         "pullable image, got 'kftune-image-registry-not-set.invalid/kftune-trainer:0.1.0': "
         "kftune publishes no images; build and push them with `kftune images push --registry "
         "REGISTRY`, then give `--image` 'REGISTRY/kftune-trainer:0.1.0'"),
    Case("an image of the user's", ["--image", "registry.example/ml/kftune-trainer:0.1.0"],
         "registry.example/ml/kftune-trainer:0.1.0", ""),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_dry_run_prints_the_manifest_and_warns_of_the_placeholder_image(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ARGS, *case.flags]) == 0
    captured = capsys.readouterr()
    manifest = yaml.safe_load(captured.out)
    (container,) = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"][
        "containers"]
    assert container["image"] == case.image
    assert captured.err.splitlines() == ([case.warning] if case.warning else [])
