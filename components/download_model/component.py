"""KFP interface of the download_model component."""

from kfp import dsl
from kfp.dsl import Model, Output

from ..common.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def download_model(
    uri: str,
    model: Output[Model],
    revision: str = "",
    task: str = "causal-lm",
    trust_remote_code: bool = False,
):
    """Downloads a pretrained model in Hugging Face layout, without loading its weights.

    Args:
        uri: Where the model is: `hf://org/name`, `s3://bucket/prefix`, `gs://bucket/prefix`,
            `file://...` or a plain path, `pvc://claim/path`, or `pkg://module/path`.
        model: Output. The model directory (config, safetensors, tokenizer) and `manifest.json`.
        revision: Hub revision (branch, tag or commit) for `hf://`; empty for the default branch.
        task: What the model will be fine-tuned for: `causal-lm`, `sequence-classification` or
            `preference` (a causal LM).
        trust_remote_code: Allow the model's own Python code from the Hub. Off by default: only
            turn it on for repositories you trust.
    """
    import logging

    from kftune.components.download_model.model import ModelSource, download_model_to

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    source = ModelSource(uri=uri, revision=revision, task=task, trust_remote_code=trust_remote_code)
    download_model_to(source, model_dir=model.path)
