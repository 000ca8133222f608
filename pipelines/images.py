"""`kftune images build|push`: kftune's two images, built from images/, tagged for your registry.

    kftune images build --registry REGISTRY [--tool docker|podman|buildah] [--build-flags FLAGS]
    kftune images push  --registry REGISTRY [...]       (builds, then pushes both tags)

kftune publishes no images (see components/common/images.py): these commands make them, with
whichever of docker (with a running daemon), podman or buildah works here, and print the
`kftune compile` / `submit` / `launch` flags that use them. `--build-flags` go to every build
(`--build-arg HTTPS_PROXY=...`, `--network host`, `--build-arg BASE_IMAGE=...`).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..components.common import images as names
from ..components.common.errors import InputError
from .errors import CliError

TOOLS = ("docker", "podman", "buildah")
# Each tool's cheapest call that fails when it cannot build here (docker: no daemon).
_PROBES = {"docker": ["docker", "info"], "podman": ["podman", "info"],
           "buildah": ["buildah", "info"]}


@dataclass(frozen=True)
class Image:
    """One of kftune's images: its Dockerfile under images/ and its tag for a registry."""

    name: str
    dockerfile: Path
    tag: str


def source_root() -> Path:
    """The kftune checkout whose images/ is built: kftune's own (editable), else the current dir.

    Raises:
        CliError: when neither holds images/ (it is not packaged in the wheel).
    """
    package = Path(__file__).resolve().parents[1]
    for root in (package, Path.cwd()):
        if (root / "images" / "runtime" / "Dockerfile").is_file():
            return root
    raise CliError(
        f"no images/ beside the installed kftune ({package}) nor in the current directory: "
        "the images build from a source checkout",
        hint="git clone the kftune repository and run this command there",
    )


def planned(registry: str, root: Path) -> list[Image]:
    """The two images under `registry`, trainer first (the runtime image names it)."""
    return [
        Image("trainer", root / "images" / "trainer" / "Dockerfile", names.trainer_image(registry)),
        Image("runtime", root / "images" / "runtime" / "Dockerfile", names.runtime_image(registry)),
    ]


def pick_tool(wanted: str = "") -> str:
    """`wanted`, or the first of docker, podman, buildah that can build here.

    Raises:
        CliError: when none can (or `wanted` cannot), saying what each answered.
    """
    notes = []
    for tool in (wanted,) if wanted else TOOLS:
        if shutil.which(tool) is None:
            notes.append(f"{tool}: not installed")
            continue
        probe = subprocess.run(_PROBES[tool], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return tool
        last = (probe.stderr.strip() or probe.stdout.strip()).splitlines()
        notes.append(f"{tool}: `{' '.join(_PROBES[tool])}` failed: {last[-1] if last else ''}")
    raise CliError(
        "no container build tool works here (" + "; ".join(notes) + ")",
        hint="install docker (with its daemon running), podman or buildah",
    )


def build_command(tool: str, image: Image, root: Path, registry: str,
                  extra: Sequence[str] = ()) -> list[str]:
    """The command that builds `image` with `tool` from the checkout at `root`."""
    build = [tool, "build"] if tool != "buildah" else ["buildah", "build"]
    command = [*build, "-f", str(image.dockerfile), "-t", image.tag]
    ignore = image.dockerfile.with_name("Dockerfile.dockerignore")
    if tool != "docker":  # docker (BuildKit) reads <Dockerfile>.dockerignore by itself
        command += ["--ignorefile", str(ignore)]
    if image.name == "runtime":
        command += ["--build-arg", f"TRAINER_IMAGE={names.trainer_image(registry)}"]
    return [*command, *extra, str(root)]


def use_flags(registry: str) -> list[str]:
    """The commands that run the pipeline and the training pods in the images of `registry`."""
    return [
        f"kftune compile --image-registry {registry} --output-dir compiled-images"
        "   # YAML for the KFP UI",
        f"kftune submit --host URL --image-registry {registry} [--param ...]",
        f"kftune launch --image {names.trainer_image(registry)} ...",
    ]


def command_images(args: argparse.Namespace) -> int:
    """`kftune images build|push`."""
    problems = names.registry_problems(args.registry, "--registry")
    if problems:
        raise InputError(problems)
    extra = shlex.split(args.build_flags)
    root = source_root()
    tool = pick_tool(args.tool)
    plan = planned(args.registry, root)
    for image in plan:
        command = build_command(tool, image, root, args.registry, extra)
        print(f"building {image.tag} ({tool}): {' '.join(command)}", flush=True)
        if subprocess.run(command, check=False).returncode != 0:
            raise CliError(f"building {image.tag} with {tool} failed (its output is above)",
                           hint=f"the build context is {root}; see README.md, \"Images\"")
    if args.action == "push":
        for image in plan:
            print(f"pushing {image.tag}", flush=True)
            if subprocess.run([tool, "push", image.tag], check=False).returncode != 0:
                raise CliError(f"pushing {image.tag} with {tool} failed (its output is above)",
                               hint=f"log in first: `{tool} login {args.registry.split('/')[0]}`")
    done = "pushed" if args.action == "push" else "built"
    print(f"{done} {', '.join(image.tag for image in plan)}")
    print("use them with:" if args.action == "push" else "push them (`kftune images push`), then:")
    for line in use_flags(args.registry):
        print(f"  {line}")
    return 0


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Registers `kftune images` among the subcommands."""
    parser = commands.add_parser(
        "images", parents=[common], help="build (and push) kftune's runtime and trainer images",
        description="Build kftune's two images from images/ with docker, podman or buildah, "
        "tagged REGISTRY/kftune-runtime and REGISTRY/kftune-trainer; `push` also pushes them.",
    )
    parser.add_argument("action", choices=("build", "push"))
    parser.add_argument("--registry", required=True,
                        help="where the images go, e.g. ghcr.io/my-org or registry.local:5000/ml")
    parser.add_argument("--tool", choices=TOOLS, default="",
                        help="default: the first of docker, podman, buildah that works")
    parser.add_argument("--build-flags", default="", metavar="FLAGS",
                        help="more flags for every build, shell-quoted in one argument, e.g. "
                        "\"--network host --build-arg HTTPS_PROXY=http://proxy:3128\"")
    parser.set_defaults(handler=command_images)
