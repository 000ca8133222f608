"""download_model logic: fetch a pretrained model in Hugging Face layout, check it, describe it.

Only what fine-tuning needs is fetched: config, tokenizer files, generation config and the
weights (safetensors when the repository has them, else the PyTorch .bin files). Hub downloads go
through the huggingface_hub cache, so they resume and show a progress bar. The weights are never
loaded: the parameter count and dtype come from the safetensors headers. Config and tokenizer are
loaded once in a child process (`verify.py`) to prove the artifact is usable; this process never
imports torch.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import secrets, uris
from ..common.artifacts import (
    atomic_directory,
    check_files_parse,
    directory_size,
    write_manifest,
)
from ..common.errors import OUTPUT_DISK_FIX, InputError, Problems, writing
from ..common.tasks import check_task

logger = logging.getLogger(__name__)

MODEL_SCHEMES = ("hf", "s3", "gs", "file", "pvc", "pkg")
METADATA_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "chat_template*",
]
SAFETENSORS_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
BIN_PATTERNS = ["pytorch_model*.bin", "pytorch_model*.bin.index.json"]
CODE_PATTERNS = ["*.py"]
VERIFY_TIMEOUT_SECONDS = 600
DAMAGED_FIX = ("the model's files are damaged or were cut short when uploaded: upload them "
               "again, or point `uri` at an intact copy")
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True)
class ModelSource:
    """Which pretrained model to download and what it will be fine-tuned for."""

    uri: str
    """hf://org/name[@revision], s3://bucket/prefix, gs://bucket/prefix, file:// or a path,
    pvc://claim/path or pkg://module/path."""
    revision: str = ""
    """Hub revision (branch, tag or commit) for hf://; empty for the default branch."""
    task: str = "causal-lm"
    """The fine-tuning task: causal-lm, sequence-classification or preference."""
    trust_remote_code: bool = False
    """Allow the model's own Python code. Off by default: only for repositories you trust."""

    def __post_init__(self) -> None:
        problems = Problems()
        location, uri_problems = uris.parse_problems(self.uri, parameter="uri")
        problems.extend(uri_problems)
        if location is not None and location.scheme not in MODEL_SCHEMES:
            problems.add(
                f"`uri` {location.display!r}: a model is a directory, which {location.scheme}:// "
                f"cannot list; use hf://, s3://, gs://, file:// or a path, pvc:// or pkg://"
            )
        problems.extend(uris.revision_problems(location, self.revision))
        problems.extend(check_task(self.task))
        if not isinstance(self.trust_remote_code, bool):
            problems.add(
                f"`trust_remote_code` must be true or false, got {self.trust_remote_code!r}"
            )
        problems.extend(secrets.field_problems(self))
        problems.raise_if_any()

    @property
    def location(self) -> uris.Location:
        """The parsed `uri`."""
        return uris.parse_uri(self.uri)

    @property
    def hub_revision(self) -> str:
        """The Hub revision asked for (from `revision` or the URI's @revision)."""
        return uris.hub_revision(self.uri, self.revision)


def _matches(relative: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(relative, pattern) for pattern in patterns)


def select_model_files(relatives: list[str], *, trust_remote_code: bool = False) -> list[str]:
    """The files fine-tuning needs: metadata, tokenizer, and safetensors weights over .bin ones.

    Other frameworks' weights, READMEs, .gitattributes and the like are skipped.
    """
    patterns = METADATA_PATTERNS + (CODE_PATTERNS if trust_remote_code else [])
    has_safetensors = any(_matches(path, SAFETENSORS_PATTERNS[:1]) for path in relatives)
    patterns += SAFETENSORS_PATTERNS if has_safetensors else BIN_PATTERNS
    return sorted(path for path in relatives if _matches(path, patterns))


def _files_under(root: Path) -> list[str]:
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and ".cache" not in path.relative_to(root).parts
    )


def download_model_to(
    source: ModelSource, model_dir: str | Path, *, check_loads: bool = True
) -> dict[str, Any]:
    """Downloads `source` into `model_dir` (Hugging Face layout + manifest.json), atomically.

    Args:
        source: the model to download.
        model_dir: the output directory; it appears complete or not at all.
        check_loads: load config and tokenizer (in a child process) and check that the task fits
            the architecture. Only fast transport tests turn this off.

    Returns:
        The manifest.

    Raises:
        InputError: a missing model/repository, a directory that is not a model, no access, the
            task not fitting the architecture, custom code without `trust_remote_code`.
        TimeoutError: the source timed out on every attempt.
        ConnectionError: the source could not be reached on every attempt.
        RuntimeError: the verification process failed unexpectedly.
    """
    location = source.location
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    resolved = None
    with tempfile.TemporaryDirectory(prefix=".kftune-download-", dir=model_dir.parent) as work, \
            writing(model_dir.parent, what=f"the model {location.display!r}", fix=OUTPUT_DISK_FIX):
        if location.scheme == "hf":
            root, resolved = _hub_model(source)
        else:
            root = uris.fetch(
                location,
                Path(work),
                parameter="uri",
                select=lambda paths: select_model_files(
                    paths, trust_remote_code=source.trust_remote_code
                ),
            )
            if not root.is_dir():
                raise InputError(
                    [
                        f"`uri` {location.display!r} is a file; a model is a directory in Hugging "
                        f"Face layout (config.json, weights, tokenizer): point at that directory"
                    ]
                )
        files = select_model_files(_files_under(root), trust_remote_code=source.trust_remote_code)
        _check_layout(files, location)
        with atomic_directory(model_dir) as stage:
            logger.info("Copying %d file(s) into the model artifact", len(files))
            uris.copy_tree(root, stage, files)
            check_files_parse(stage, parameter="uri", shown=location.display, fix=DAMAGED_FIX)
            details = _verify(stage, source) if check_loads else {}
            manifest = _manifest(stage, source, resolved, details, files)
            write_manifest(stage, manifest)
    logger.info(
        "Model %s (%s, %s parameters, %s) written to %s",
        location.display,
        manifest["architecture"],
        manifest["parameters"],
        manifest["dtype"],
        model_dir,
    )
    return manifest


def _manifest(stage: Path, source: ModelSource, resolved: str | None, details: dict[str, Any],
              files: list[str]) -> dict[str, Any]:
    """The manifest of the model staged in `stage` (its files already checked to parse)."""
    config = json.loads((stage / "config.json").read_text(encoding="utf-8"))
    parameters, weights_dtype = safetensors_summary(stage)
    return {
        "kind": "model",
        "source": {
            "uri": source.location.display,
            "revision": source.hub_revision or None,
            "resolved_revision": resolved,
        },
        "task": source.task,
        "architecture": details.get("architecture")
        or (config.get("architectures") or [None])[0],
        "model_type": details.get("model_type") or config.get("model_type"),
        "parameters": parameters,
        "dtype": weights_dtype or config.get("dtype") or config.get("torch_dtype"),
        "size_bytes": directory_size(stage),
        "trust_remote_code": source.trust_remote_code,
        "tokenizer_class": details.get("tokenizer_class"),
        "files": files,
    }


def _hub_model(source: ModelSource) -> tuple[Path, str]:
    code = CODE_PATTERNS if source.trust_remote_code else []
    snapshot, commit = uris.hub_snapshot(
        source.location,
        revision=source.hub_revision,
        repo_type="model",
        allow_patterns=METADATA_PATTERNS + SAFETENSORS_PATTERNS + code,
    )
    if not any(_matches(path, SAFETENSORS_PATTERNS[:1]) for path in _files_under(snapshot)):
        logger.info("No safetensors weights in %s; fetching the .bin weights", source.uri)
        snapshot, commit = uris.hub_snapshot(
            source.location,
            revision=commit,
            repo_type="model",
            allow_patterns=METADATA_PATTERNS + BIN_PATTERNS + code,
        )
    return snapshot, commit


def _check_layout(files: list[str], location: uris.Location) -> None:
    problems = Problems()
    if "config.json" not in files:
        problems.add(
            f"`uri` {location.display!r} has no config.json; a model is a directory in Hugging "
            f"Face layout (config.json, *.safetensors, tokenizer files)"
        )
    if not any(_matches(path, SAFETENSORS_PATTERNS[:1] + BIN_PATTERNS[:1]) for path in files):
        problems.add(
            f"`uri` {location.display!r} has no weights (*.safetensors or pytorch_model*.bin); "
            f"point at a directory that holds them"
        )
    problems.raise_if_any()


def _verify(model_dir: Path, source: ModelSource) -> dict[str, Any]:
    """Runs `verify.py` in a child process; raises InputError for the problems it reports."""
    command = [
        sys.executable,
        "-m",
        "kftune.components.download_model.verify",
        str(model_dir),
        "--task",
        source.task,
        "--uri",
        source.location.display,
    ]
    if source.trust_remote_code:
        command.append("--trust-remote-code")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    logger.info("Checking that config and tokenizer load")
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=VERIFY_TIMEOUT_SECONDS
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(
            f"loading the config and tokenizer of {source.location.display!r} took over "
            f"{VERIFY_TIMEOUT_SECONDS} s"
        ) from None
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(
            f"checking the model at {source.location.display!r} failed (exit "
            f"{completed.returncode}): {uris.redact(completed.stderr)[-1500:]}"
        )
    details = json.loads(lines[-1])
    if details["problems"]:
        raise InputError([uris.redact(problem) for problem in details["problems"]])
    return details


def safetensors_summary(model_dir: str | Path) -> tuple[int | None, str | None]:
    """Parameter count and dominant dtype from the safetensors headers (weights are not read).

    Returns:
        (parameters, dtype name), or (None, None) when there are no safetensors files.
    """
    total = 0
    by_dtype: Counter[str] = Counter()
    files = sorted(Path(model_dir).rglob("*.safetensors"))
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for size in tensor["shape"]:
                count *= size
            total += count
            by_dtype[tensor["dtype"]] += count
    if not files:
        return None, None
    dominant = by_dtype.most_common(1)[0][0] if by_dtype else None
    return total, _DTYPES.get(dominant, dominant.lower() if dominant else None)
