"""kftune: Kubeflow Pipelines components that fine-tune LLMs with LoRA."""

__version__ = "0.1.0"
