"""images/ Dockerfiles, components/common/images.py, `kftune images` and the compiled YAML agree.

The images themselves are built and run by the image tier (tests/images/, `pytest -m images`).
"""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import kftune
import pytest
from kftune.components.common import images
from kftune.pipelines import cli
from kftune.pipelines import compile as compiling
from kftune.pipelines import images as building
from kftune.pipelines.errors import CliError
from packaging.specifiers import SpecifierSet

# The checkout (kftune itself may be installed from its wheel, away from it).
ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "runtime": (ROOT / "images" / "runtime" / "Dockerfile", images.runtime_image("REGISTRY")),
    "trainer": (ROOT / "images" / "trainer" / "Dockerfile", images.trainer_image("REGISTRY")),
}


class Case(NamedTuple):
    name: str
    input: object
    expected: object


def _pyproject_torch() -> SpecifierSet:
    text = (ROOT / "pyproject.toml").read_text()
    return SpecifierSet(re.search(r'"torch(>=[^"]+)"', text).group(1))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_declares_the_image_and_version_components_reference(name: str) -> None:
    dockerfile, tag = DOCKERFILES[name]
    text = dockerfile.read_text()
    declared = re.search(r"^# image: (\S+)$", text, re.MULTILINE).group(1)
    version = re.search(r"^ARG KFTUNE_VERSION=(\S+)$", text, re.MULTILINE).group(1)
    assert f"{declared}:{version}" == tag
    assert version == kftune.__version__
    assert f"-t {tag} ." in text  # the build command in the header builds exactly that tag


def test_package_version_is_defined_once() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^version = "([^"]+)"$', project, re.MULTILINE).group(1) == kftune.__version__


def test_both_images_run_the_same_torch_within_pyproject_range() -> None:
    runtime = DOCKERFILES["runtime"][0].read_text()
    trainer = DOCKERFILES["trainer"][0].read_text()
    assert re.findall(r"torch==(\S+)", runtime) == ["2.13.0"]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in runtime
    # PyTorch's published CUDA image, the one Kubeflow Trainer v2.3's torch runtime runs.
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", trainer, re.MULTILINE).group(1)
    assert base == "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"
    assert _pyproject_torch().contains("2.13.0")


def test_checked_in_compiled_yaml_names_no_registry_anybody_serves() -> None:
    compiled = ROOT / "compiled"
    for path in sorted(compiled.rglob("*.yaml")):
        used = set(re.findall(r"^\s+image: (\S+)$", path.read_text(), re.MULTILINE))
        assert used == {images.RUNTIME_IMAGE}, path
    assert images.RUNTIME_IMAGE.split("/")[0].endswith(".invalid")  # RFC 2606: never resolves


def test_with_registry_moves_every_step_and_nothing_else() -> None:
    text = (ROOT / "compiled" / compiling.PIPELINE_FILE).read_text()
    moved = images.with_registry(text, "registry.example.com:5000/ml")
    steps = len(re.findall(r"^\s+image: ", text, re.MULTILINE))  # one per step, optional ones too
    assert steps >= 4
    assert moved.count("image: registry.example.com:5000/ml/kftune-runtime:0.1.0\n") == steps
    assert images.UNSET_REGISTRY not in moved
    assert moved.replace("registry.example.com:5000/ml", images.UNSET_REGISTRY) == text


REGISTRIES = [
    Case("host and org", "ghcr.io/my-org", []),
    Case("port and path", "registry.example.com:5000/ml/team", []),
    Case("localhost", "localhost:5000", []),
    Case("trailing slash", "ghcr.io/my-org/", []),
    Case("empty", "", ["got ''"]),
    Case("scheme", "https://ghcr.io/my-org", ["got 'https://ghcr.io/my-org'"]),
    Case("upper case", "ghcr.io/My-Org", ["got 'ghcr.io/My-Org'"]),
    Case("the unset placeholder", images.UNSET_REGISTRY, [f"got {images.UNSET_REGISTRY!r}"]),
]


@pytest.mark.parametrize("case", REGISTRIES, ids=[case.name for case in REGISTRIES])
def test_registry_problems(case: Case) -> None:
    problems = images.registry_problems(case.input, "--registry")
    assert len(problems) == len(case.expected)
    for problem, expected in zip(problems, case.expected, strict=True):
        assert problem.startswith("`--registry` must be a registry you push to")
        assert expected in problem


def test_an_unset_trainer_image_is_a_problem_naming_the_fix() -> None:
    (problem,) = images.unset_image_problems(images.trainer_image(images.UNSET_REGISTRY), "image")
    assert "`image` names no pullable image" in problem
    assert "kftune images push --registry REGISTRY" in problem
    assert images.unset_image_problems("ghcr.io/my-org/kftune-trainer:0.1.0", "image") == []


@pytest.mark.parametrize("env, expected", [
    ({}, images.trainer_image(images.UNSET_REGISTRY)),
    ({images.TRAINER_IMAGE_ENV: "ghcr.io/o/kftune-trainer:0.1.0"},
     "ghcr.io/o/kftune-trainer:0.1.0"),
], ids=["plain", "in a runtime image built for ghcr.io/o"])
def test_the_pods_default_image_is_the_one_the_runtime_image_names(env, expected) -> None:
    clean = {key: value for key, value in os.environ.items() if key != images.TRAINER_IMAGE_ENV}
    printed = subprocess.run(
        [sys.executable, "-c",
         "from kftune.components.common import images; print(images.TRAINER_IMAGE)"],
        env=clean | env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert printed == expected


def _tool(directory: Path, name: str, code: int, message: str = "") -> None:
    script = directory / name
    script.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


PICKS = [
    Case("docker without its daemon: podman", {"docker": 1, "podman": 0}, "podman"),
    Case("docker with its daemon", {"docker": 0, "podman": 0}, "docker"),
    Case("buildah alone", {"buildah": 0}, "buildah"),
    Case("none works", {"docker": 1}, CliError),
]


@pytest.mark.parametrize("case", PICKS, ids=[case.name for case in PICKS])
def test_pick_tool_takes_the_first_that_can_build(case: Case, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name, code in case.input.items():
        _tool(tmp_path, name, code, "Cannot connect to the Docker daemon" if code else "")
    monkeypatch.setenv("PATH", str(tmp_path))
    if case.expected is CliError:
        with pytest.raises(CliError, match=r"docker: `docker info` failed: Cannot connect"):
            building.pick_tool()
    else:
        assert building.pick_tool() == case.expected


COMMANDS = [
    Case("docker runtime", ("docker", "runtime"),
         ["docker", "build", "-f", "{root}/images/runtime/Dockerfile", "-t",
          "r.example/ml/kftune-runtime:0.1.0", "--build-arg",
          "TRAINER_IMAGE=r.example/ml/kftune-trainer:0.1.0", "--network", "host", "{root}"]),
    Case("podman trainer", ("podman", "trainer"),
         ["podman", "build", "-f", "{root}/images/trainer/Dockerfile", "-t",
          "r.example/ml/kftune-trainer:0.1.0", "--ignorefile",
          "{root}/images/trainer/Dockerfile.dockerignore", "--network", "host", "{root}"]),
    Case("buildah runtime", ("buildah", "runtime"),
         ["buildah", "build", "-f", "{root}/images/runtime/Dockerfile", "-t",
          "r.example/ml/kftune-runtime:0.1.0", "--ignorefile",
          "{root}/images/runtime/Dockerfile.dockerignore", "--build-arg",
          "TRAINER_IMAGE=r.example/ml/kftune-trainer:0.1.0", "--network", "host", "{root}"]),
]


@pytest.mark.parametrize("case", COMMANDS, ids=[case.name for case in COMMANDS])
def test_build_command(case: Case) -> None:
    tool, name = case.input
    (image,) = [image for image in building.planned("r.example/ml", ROOT) if image.name == name]
    command = building.build_command(tool, image, ROOT, "r.example/ml", ["--network", "host"])
    assert command == [part.replace("{root}", str(ROOT)) for part in case.expected]


def test_images_build_refuses_a_bad_registry_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["images", "build", "--registry", "https://ghcr.io/me"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kftune images: error: `--registry` must be a registry you push to")
    assert "Traceback" not in err


def test_compile_with_image_registry_writes_its_images(tmp_path: Path) -> None:
    assert cli.main(["compile", "--image-registry", "ghcr.io/my-org",
                     "--output-dir", str(tmp_path)]) == 0
    written = sorted(tmp_path.rglob("*.yaml"))
    assert len(written) == len(compiling.compile_targets())
    for path in written:
        used = set(re.findall(r"^\s+image: (\S+)$", path.read_text(), re.MULTILINE))
        assert used == {"ghcr.io/my-org/kftune-runtime:0.1.0"}, path
