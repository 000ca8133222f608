"""The container images the steps and the training pods run in, and the registry they come from.

kftune publishes no images: the user builds them from images/ and pushes them to a registry of
their own (`kftune images push --registry REGISTRY`), then compiles or submits the pipeline with
that registry. Until then the compiled YAML names `UNSET_REGISTRY`, a host under the reserved
`.invalid` domain (RFC 2606) that no cluster can pull from, so that nothing silently points at
somebody else's registry; `kftune submit` and the train step refuse it before anything is created.
"""

from __future__ import annotations

import os
import re

from ... import __version__

UNSET_REGISTRY = "kftune-image-registry-not-set.invalid"
# Set in the runtime image by `kftune images build`: the trainer image built beside it, which the
# train step's pods use when the step is given no `image`.
TRAINER_IMAGE_ENV = "KFTUNE_TRAINER_IMAGE"


def runtime_image(registry: str) -> str:
    """The runtime image (download, train step, evaluate: CPU) under `registry`."""
    return f"{registry.rstrip('/')}/kftune-runtime:{__version__}"


def trainer_image(registry: str) -> str:
    """The trainer image (the training pods: CUDA PyTorch) under `registry`."""
    return f"{registry.rstrip('/')}/kftune-trainer:{__version__}"


# What the components are compiled with; `with_registry` puts a real registry in its place.
RUNTIME_IMAGE = runtime_image(UNSET_REGISTRY)
# The pods' image when the train step is given none: the runtime image's companion, else unset.
TRAINER_IMAGE = os.environ.get(TRAINER_IMAGE_ENV) or trainer_image(UNSET_REGISTRY)

_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")


def registry_problems(registry: str, flag: str = "--image-registry") -> list[str]:
    """One line per problem with `registry` (a host[:port] with an optional path); [] if fine."""
    registry = registry.rstrip("/")
    if _REGISTRY.match(registry) and registry.split("/")[0] != UNSET_REGISTRY:
        return []
    return [
        f"`{flag}` must be a registry you push to, a host[:port] with an optional path in "
        f"lower case, e.g. 'ghcr.io/my-org' or 'registry.example.com:5000/ml', got {registry!r}"
    ]


def with_registry(compiled_yaml: str, registry: str) -> str:
    """Compiled pipeline or component YAML with its steps' image under `registry`."""
    return compiled_yaml.replace(f"image: {RUNTIME_IMAGE}\n", f"image: {runtime_image(registry)}\n")


def unset_image_problems(image: str, parameter: str) -> list[str]:
    """A problem when `image` names `UNSET_REGISTRY` (no registry was ever given); else []."""
    if not image.startswith(f"{UNSET_REGISTRY}/"):
        return []
    return [
        f"`{parameter}` names no pullable image, got {image!r}: kftune publishes no images; "
        f"build and push them with `kftune images push --registry REGISTRY`, then give "
        f"`{parameter}` {trainer_image('REGISTRY')!r}"
    ]
