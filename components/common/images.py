"""Container images the components run in: defined here once, checked against images/ by a test."""

from ... import __version__

REGISTRY = "ghcr.io/kftune"
# Download and evaluate steps (CPU): kftune with the light dependencies.
RUNTIME_IMAGE = f"{REGISTRY}/runtime:{__version__}"
# Training pods (CUDA PyTorch): kftune[train].
TRAINER_IMAGE = f"{REGISTRY}/trainer:{__version__}"
