"""KFP interface of the download_dataset component."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from ..common.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def download_dataset(
    uri: str,
    train_data: Output[Dataset],
    eval_data: Output[Dataset],
    split: str = "train",
    revision: str = "",
    subset: str = "",
    column_mapping: dict = None,
    eval_fraction: float = 0.1,
    eval_split: str = "",
    seed: int = 42,
    encoding: str = "utf-8",
):
    """Downloads a dataset and writes its training and held-out rows in kftune's normalized format.

    Args:
        uri: Where the data is: `hf://org/name`, `s3://bucket/key`, `gs://bucket/key`,
            `https://...`, `file://...` or a plain path, `pvc://claim/path`, or `pkg://module/path`
            (a file shipped in an installed Python package). Files may be jsonl, json, csv,
            parquet (optionally compressed) or a `save_to_disk` directory.
        train_data: Output. The training rows (`data.parquet`) and their `manifest.json`.
        eval_data: Output. The held-out rows, disjoint from `train_data`, and their manifest.
        split: Which rows to take, in `datasets` slicing syntax: `train`, `train[:3000]`,
            `train[10%:20%]`.
        revision: Hub revision (branch, tag or commit) for `hf://`; empty for the default branch.
        subset: Hub dataset configuration (subset) name, if the dataset has several.
        column_mapping: Which source column plays which role, e.g. `{"text": "tweet", "label":
            "sentiment"}`. Roles: text, label, prompt, completion, messages, chosen, rejected.
        eval_fraction: Fraction of the selected rows held out for evaluation (seeded shuffle).
            Ignored when `eval_split` is set; 0 holds out nothing.
        eval_split: A separate split expression for the held-out rows, e.g. `test[:500]`.
        seed: Seed of the shuffle that picks the held-out rows.
        encoding: Text encoding of csv/json/text files, e.g. `latin-1` or `cp1252`. Bytes it
            cannot decode read as U+FFFD, with a warning naming the lines (and `decoding` in the
            manifests).
    """
    import logging

    from kftune.components.download_dataset.dataset import DatasetSource, download_dataset_to

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    source = DatasetSource(
        uri=uri,
        split=split,
        revision=revision,
        subset=subset,
        column_mapping=column_mapping or {},
        eval_fraction=eval_fraction,
        eval_split=eval_split,
        seed=seed,
        encoding=encoding,
    )
    download_dataset_to(source, train_dir=train_data.path, eval_dir=eval_data.path)
