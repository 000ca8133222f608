"""Where the training runs: a PyTorchJob on Kubernetes, or torchrun processes on this host.

Both backends implement `Backend` (submit, wait, logs, delete), so the launch step drives them the
same way.
"""

from .base import Backend, deleting_on_exit

__all__ = ["Backend", "deleting_on_exit"]
