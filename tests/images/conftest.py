"""The image tier: images/ built with podman on stand-in bases, then run as KFP and the operator do.

`images/standins.sh check` says whether podman can run containers here (the tier skips, saying
why, when it cannot); `images/standins.sh build` makes the stand-in bases once; then
`kftune images build` builds both Dockerfiles on them, with the layer cache, so that a later
session rebuilds only what changed. The images' sizes are printed at the end of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# The checkout (kftune itself may be installed from its wheel, away from it).
ROOT = Path(__file__).resolve().parents[2]
STANDINS = ROOT / "images" / "standins.sh"
REGISTRY = "localhost/kftune-test"
# The stand-in for the CUDA PyTorch base (images/standins.sh makes it).
TORCH_BASE = "localhost/kftune-standin/pytorch:2.13.0-cpu"
WHEELS = os.environ.get("KFTUNE_WHEELS", "/opt/wheels")
_SIZES: dict[str, int] = {}


@dataclass(frozen=True)
class Podman:
    """podman with the tier's containers.conf."""

    env: Mapping[str, str]

    def __call__(self, *args: str, check: bool = True, timeout: float = 1800,
                 **kwargs) -> subprocess.CompletedProcess[str]:
        """Runs `podman ARGS`; on failure the assertion shows its output's tail."""
        result = subprocess.run(["podman", *args], env=dict(self.env), text=True,
                                capture_output=True, timeout=timeout, check=False, **kwargs)
        if check:
            assert result.returncode == 0, (
                f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n"
                f"{(result.stdout + result.stderr)[-4000:]}"
            )
        return result

    def run(self, image: str, command: Sequence[str], *, env: Mapping[str, str] = {},
            mounts: Mapping[str, str] = {}, name: str = "",
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """`podman run --rm --network host` of `command` in `image`, as a pod would run it."""
        flags = ["--rm", "--network", "host", "--pull", "never"]
        if name:
            flags += ["--name", name]
        for key, value in env.items():
            flags += ["-e", f"{key}={value}"]
        for host, container in mounts.items():
            flags += ["-v", f"{host}:{container}"]
        return self("run", *flags, image, *command, check=False, timeout=timeout)


def _standins(action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(STANDINS), action], text=True, capture_output=True,
                          check=False, timeout=1800)


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman ready to run containers here, with the stand-in bases built; else the tier skips."""
    check = _standins("check")
    if check.returncode != 0:
        pytest.skip((check.stdout + check.stderr).strip().splitlines()[-1])
    conf = _standins("conf").stdout.strip()
    built = _standins("build")
    assert built.returncode == 0, f"images/standins.sh build failed:\n{built.stdout}{built.stderr}"
    return Podman({**os.environ, "CONTAINERS_CONF": conf})


@dataclass(frozen=True)
class Images:
    """The two images `kftune images build` made for the tier's registry."""

    runtime: str
    trainer: str


@pytest.fixture(scope="session")
def images(podman: Podman) -> Images:
    """Both Dockerfiles built unchanged by `kftune images build --tool podman` on the stand-ins."""
    from kftune.components.common import images as names

    flags = [
        "--pull=never", "--network", "host",
        # pip in the stand-in bases finds CPU torch here (their pip.conf names it)
        "-v", f"{WHEELS}:{WHEELS}:ro",
        "--build-arg", "TORCH_INDEX_URL=https://pypi.org/simple",
        "--build-arg", f"BASE_IMAGE={TORCH_BASE}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "kftune.pipelines.cli", "images", "build", "--registry", REGISTRY,
         "--tool", "podman", "--build-flags", " ".join(flags)],
        cwd=ROOT,  # the checkout: kftune may be installed from its wheel, without images/
        env=dict(podman.env), text=True, capture_output=True, timeout=3600, check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert f"kftune compile --image-registry {REGISTRY}" in result.stdout
    built = Images(names.runtime_image(REGISTRY), names.trainer_image(REGISTRY))
    for tag in (built.runtime, built.trainer):
        inspected = json.loads(podman("image", "inspect", tag).stdout)[0]
        _SIZES[tag] = int(inspected["Size"])
    return built


def pytest_terminal_summary(terminalreporter) -> None:
    """The images' sizes, as `podman image inspect` reports them."""
    if _SIZES:
        terminalreporter.section("image sizes")
        for tag, size in _SIZES.items():
            terminalreporter.write_line(f"{tag}: {size / 1e9:.2f} GB")


@pytest.fixture(scope="session")
def compiled(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`kftune compile --image-registry` for the tier's registry: the YAML a user would upload."""
    directory = tmp_path_factory.mktemp("compiled")
    result = subprocess.run(
        [sys.executable, "-m", "kftune.pipelines.cli", "compile", "--image-registry", REGISTRY,
         "--output-dir", str(directory)],
        text=True, capture_output=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return directory


def executor_input(component: Mapping, parameters: Mapping, inputs: Mapping[str, str],
                   outputs: Mapping[str, str], output_file: str) -> dict:
    """The ExecutorInput KFP's driver hands the launcher (pipeline_spec.proto, as JSON).

    Parameters the task does not set take the component's defaults, as the driver resolves them;
    artifacts carry their URIs, which the kfp executor maps to local paths (minio:// -> /minio/);
    an optional input artifact the task does not get is absent, as the driver leaves it out.
    """
    root = component["root"]
    values = {}
    for name, definition in root["inputDefinitions"].get("parameters", {}).items():
        if name in parameters:
            values[name] = parameters[name]
        elif "defaultValue" in definition:
            default = definition["defaultValue"]
            values[name] = int(default) if definition["parameterType"] == "NUMBER_INTEGER" \
                else default

    def artifacts(definitions: Mapping, uris: Mapping[str, str]) -> dict:
        return {
            name: {"artifacts": [{
                "name": name,
                "type": {"schemaTitle": definition["artifactType"]["schemaTitle"],
                         "schemaVersion": definition["artifactType"]["schemaVersion"]},
                "uri": uris[name],
                "metadata": {},
            }]}
            for name, definition in definitions.items()
            if name in uris or not definition.get("isOptional")
        }

    return {
        "inputs": {
            "parameterValues": values,
            "artifacts": artifacts(root["inputDefinitions"].get("artifacts", {}), inputs),
        },
        "outputs": {
            "artifacts": artifacts(root.get("outputDefinitions", {}).get("artifacts", {}), outputs),
            "outputFile": output_file,
        },
    }


@dataclass(frozen=True)
class Step:
    """One finished run of a compiled component: its exit status, log and executor output."""

    returncode: int
    log: str
    output: dict


@pytest.fixture
def launch_step(podman: Podman, compiled: Path, tmp_path: Path):
    """Runs a compiled component's container as KFP's launcher would; returns a `Step`.

    The container command and arguments come from compiled/components/NAME.yaml, `{{$}}` filled
    with the executor input; artifact URIs are minio://kftune/..., their files in a host folder
    mounted at /minio (where the launcher would have downloaded the inputs and would upload the
    outputs from).
    """
    import yaml

    store = tmp_path / "minio"
    store.mkdir()

    def launch(name: str, parameters: Mapping, inputs: Mapping[str, str],
               outputs: Mapping[str, str], env: Mapping[str, str]) -> Step:
        component = yaml.safe_load((compiled / "components" / f"{name}.yaml").read_text())
        (executor,) = component["deploymentSpec"]["executors"].values()
        container = executor["container"]
        out = tmp_path / f"{name}-outputs"
        out.mkdir()
        # The launcher gives every output a URI; the test names those it reads.
        declared = component["root"].get("outputDefinitions", {}).get("artifacts", {})
        outputs = {output: f"minio://kftune/steps/{name}/{output}" for output in declared} | {
            **outputs}
        spec = executor_input(component, parameters, inputs, outputs,
                              "/kfp/outputs/executor_output.json")
        args = [arg.replace("{{$}}", json.dumps(spec)) for arg in container["args"]]
        assert not any("{{$" in arg for arg in args), args
        result = podman.run(container["image"], [*container["command"], *args], env=env,
                            mounts={str(store): "/minio", str(out): "/kfp/outputs"})
        written = out / "executor_output.json"
        output = json.loads(written.read_text()) if written.is_file() else {}
        return Step(result.returncode, result.stdout + result.stderr, output)

    launch.store = store
    return launch
