"""images/ Dockerfiles, components/common/images.py and the compiled components agree."""

import re
from pathlib import Path

import kftune
import pytest
import yaml
from kftune.components.common import images
from kftune.pipelines import compile as compiling

ROOT = Path(kftune.__file__).resolve().parent
DOCKERFILES = {
    "runtime": (ROOT / "images" / "runtime" / "Dockerfile", images.RUNTIME_IMAGE, "train,demo"),
    "trainer": (ROOT / "images" / "trainer" / "Dockerfile", images.TRAINER_IMAGE, "train"),
}


def _declared(dockerfile: Path) -> tuple[str, str, str]:
    text = dockerfile.read_text()
    repository = re.search(r"^# image: (\S+)$", text, re.MULTILINE)
    version = re.search(r"^ARG KFTUNE_VERSION=(\S+)$", text, re.MULTILINE)
    assert repository and version, f"{dockerfile} must declare `# image:` and KFTUNE_VERSION"
    return repository.group(1), version.group(1), text


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_builds_the_tag_components_reference(name: str) -> None:
    dockerfile, tag, extras = DOCKERFILES[name]
    repository, version, text = _declared(dockerfile)
    assert f"{repository}:{version}" == tag
    assert version == kftune.__version__
    assert f'pip install "/src[{extras}]"' in text
    assert f"-t {tag} ." in text  # the build command in the header builds exactly that tag


def test_package_version_is_defined_once() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^version = "([^"]+)"$', project, re.MULTILINE).group(1) == kftune.__version__


def test_runtime_image_only_pins_cpu_torch_2_13() -> None:
    text = DOCKERFILES["runtime"][0].read_text()
    assert re.findall(r"torch==(\S+)", text) == ["2.13.0"]
    assert "download.pytorch.org/whl/cpu" in text


def test_compiled_components_run_in_the_runtime_image() -> None:
    compiled = compiling.default_compiled_dir() / "components"
    for path in sorted(compiled.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        used = {
            executor["container"]["image"]
            for executor in spec["deploymentSpec"]["executors"].values()
        }
        assert used == {images.RUNTIME_IMAGE}, path
