"""download_dataset logic: fetch, select rows, normalize columns, write two Dataset artifacts.

The step reads from any supported URI (see `kftune.components.common.uris`), lets `datasets` parse
the files (jsonl, json, csv/tsv, parquet, arrow, text; compressed; `save_to_disk` directories; Hub
repositories), selects rows with the `datasets` split syntax, maps source columns to kftune's
canonical roles and writes:

    train_dir/ data.parquet + manifest.json   (part "train")
    eval_dir/  data.parquet + manifest.json   (part "eval", disjoint from train)

`row_ranges` in each manifest are the [start, stop) positions of its rows in the selected source
split, so train/eval disjointness can be checked from the manifests alone.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common import secrets, uris
from ..common.artifacts import DATA_FILE, atomic_directory, check_files_parse, write_manifest
from ..common.errors import (
    OUTPUT_DISK_FIX,
    DiskFullError,
    InputError,
    Problems,
    is_disk_full,
    writing,
)

logger = logging.getLogger(__name__)

ROLES = ("text", "label", "prompt", "completion", "messages", "chosen", "rejected")
_STRING_ROLES = ("text", "prompt", "completion", "chosen", "rejected")
# Roles that may hold chat messages instead of text (preference pairs in conversational form).
_CHAT_ROLES = ("prompt", "chosen", "rejected")
_BUILDERS = {
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
_TEXT_BUILDERS = ("json", "csv", "text")
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
_SPLIT_EXAMPLES = "train, train[:3000], train[10%:20%], test[-500:]"


@dataclass(frozen=True)
class DatasetSource:
    """What to download and how to cut it into training and held-out rows."""

    uri: str
    """Where the data is: hf://, s3://, gs://, https://, file:// or a path, pvc://, pkg://."""
    split: str = "train"
    """The training rows, in `datasets` split syntax: `train`, `train[:3000]`, `train[10%:20%]`."""
    revision: str = ""
    """Hub revision (branch, tag, commit) for hf:// URIs; empty for the default branch."""
    subset: str = ""
    """Dataset configuration (subset) name, when the source has several."""
    column_mapping: Mapping[str, str] = field(default_factory=dict)
    """Role -> source column, e.g. {"text": "tweet", "label": "sentiment"}. Roles: text, label,
    prompt, completion, messages, chosen, rejected. Unmapped roles whose canonical column exists
    are kept."""
    eval_fraction: float = 0.1
    """Fraction of the selected rows held out (seeded shuffle); ignored with `eval_split`."""
    eval_split: str = ""
    """A separate split expression for the held-out rows, e.g. `test[:500]`."""
    seed: int = 42
    """Seed of the shuffle that picks the held-out rows."""
    encoding: str = "utf-8"
    """Text encoding of csv/json/text files, e.g. `latin-1` or `cp1252`. Bytes it cannot decode
    become U+FFFD, with a warning naming how many lines and the first, and a note in the
    manifest's `decoding`."""

    def __post_init__(self) -> None:
        problems = Problems()
        location, uri_problems = uris.parse_problems(self.uri, parameter="uri")
        problems.extend(uri_problems)
        problems.extend(_split_problems(self.split, "split"))
        if self.eval_split:
            problems.extend(_split_problems(self.eval_split, "eval_split"))
        problems.extend(uris.revision_problems(location, self.revision))
        if not isinstance(self.subset, str):
            problems.add(f"`subset` must be a string, got {self.subset!r}")
        problems.extend(_mapping_problems(self.column_mapping))
        fraction = self.eval_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            problems.add(f"`eval_fraction` must be a number in [0, 1), got {fraction!r}")
        elif not (0 <= fraction < 1) or math.isnan(fraction):
            problems.add(
                f"`eval_fraction` must be in [0, 1) (0 holds out nothing), got {fraction!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            problems.add(f"`seed` must be an integer >= 0, got {self.seed!r}")
        problems.extend(encoding_problems(self.encoding))
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


def _split_problems(expression: Any, parameter: str) -> list[str]:
    from datasets import ReadInstruction

    if not isinstance(expression, str) or not expression.strip():
        return [
            f"`{parameter}` must be a split expression such as {_SPLIT_EXAMPLES}; got "
            f"{expression!r}"
        ]
    try:
        instruction = ReadInstruction.from_spec(expression.strip())
    except (ValueError, AssertionError, TypeError):
        return [
            f"`{parameter}` {expression!r} is not a valid split expression; use the `datasets` "
            f"slicing syntax, e.g. {_SPLIT_EXAMPLES}"
        ]
    if len(instruction._relative_instructions) != 1:
        return [
            f"`{parameter}` {expression!r} combines several splits with '+'; select rows from "
            f"one split (row positions are recorded per split)"
        ]
    return []


def encoding_problems(encoding: Any, parameter: str = "encoding") -> list[str]:
    """A problem when `encoding` is not a text encoding Python can decode files with, else none.

    The name is tried on the decoder that reads the files (`_as_utf8`'s): Python also knows
    codecs that are not text encodings (`base64`, `rot13`, `zlib`, `undefined`), which would fail
    mid-read with the codec's own error.
    """
    fix = "e.g. utf-8, latin-1, cp1252"
    if not isinstance(encoding, str) or not encoding:
        return [f"`{parameter}` must name a text encoding, got {encoding!r}; {fix}"]
    try:
        decoder_class = codecs.getincrementaldecoder(encoding)
    except LookupError:
        return [f"`{parameter}` must name a text encoding Python knows, got {encoding!r}; {fix}"]
    try:
        decoded = decoder_class(errors="replace").decode(b"", final=True)
    except Exception:  # a bytes-to-bytes codec, or one that refuses every input
        decoded = None
    if not isinstance(decoded, str):
        return [f"`{parameter}` must name a text encoding, got {encoding!r}, a codec that does "
                f"not decode bytes to text; {fix}"]
    return []


def _mapping_problems(mapping: Any) -> list[str]:
    if not isinstance(mapping, Mapping):
        return [f"`column_mapping` must be a mapping of role -> column, got {mapping!r}"]
    problems = []
    unknown = sorted(str(role) for role in mapping if role not in ROLES)
    if unknown:
        problems.append(
            f"`column_mapping` has unknown role(s) {', '.join(map(repr, unknown))}; the roles are "
            f"{', '.join(ROLES)} (write {{role: source_column}})"
        )
    for role, column in mapping.items():
        if role in ROLES and (not isinstance(column, str) or not column):
            problems.append(f"`column_mapping`[{role!r}] must name a source column, got {column!r}")
    return problems


def download_dataset_to(
    source: DatasetSource, train_dir: str | Path, eval_dir: str | Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Downloads `source` and writes the training and held-out Dataset artifacts.

    Both directories appear complete or not at all.

    Args:
        source: what to download and how to split it.
        train_dir: output directory of the training rows.
        eval_dir: output directory of the held-out rows.

    Returns:
        The train and eval manifests.

    Raises:
        InputError: bad input: a missing source, unreadable or corrupt file, unknown split, a
            selection of zero rows, missing columns, bad labels.
        TimeoutError: the source timed out on every attempt.
        ConnectionError: the source could not be reached on every attempt.
    """
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    work_parent = train_dir.parent
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kftune-download-", dir=work_parent) as work, writing(
            work_parent, what=f"the rows of {source.location.display!r}", fix=OUTPUT_DISK_FIX):
        work = Path(work)
        splits, resolved, decoding = _open_source(source, work)
        train_rows = _select(splits, source.split, "split")
        if source.eval_split:
            eval_rows = _select(splits, source.eval_split, "eval_split")
            _check_disjoint(train_rows, eval_rows, source)
            train_part, eval_part = train_rows, eval_rows
            selection = {"method": "eval_split", "eval_split": source.eval_split}
        else:
            train_part, eval_part = _hold_out(train_rows, source)
            selection = {
                "method": "eval_fraction" if source.eval_fraction > 0 else "none",
                "eval_fraction": source.eval_fraction,
                "seed": source.seed,
            }
        columns = _resolve_mapping(train_rows.dataset.column_names, source.column_mapping)
        features = train_rows.dataset.features
        train_table = _normalize(train_part, columns)
        eval_table = _normalize(eval_part, columns) if eval_part.count else None
        label_source = [train_rows] + ([eval_part] if source.eval_split else [])
        label_names, num_labels, train_table, eval_table = _encode_labels(
            train_table,
            eval_table,
            features.get(columns.get("label", "")),
            _full_split_labels(label_source, columns.get("label")),
        )
        if eval_table is None:
            eval_table = train_table.slice(0, 0)
        manifests = []
        with atomic_directory(train_dir) as train_stage, atomic_directory(eval_dir) as eval_stage:
            for part, rows, table, stage in (
                ("train", train_part, train_table, train_stage),
                ("eval", eval_part, eval_table, eval_stage),
            ):
                manifests.append(_write_part(
                    stage, table, part=part, rows=rows, source=source, resolved=resolved,
                    columns=columns, label_names=label_names, num_labels=num_labels,
                    selection=selection, decoding=decoding,
                ))
        logger.info(
            "Wrote %d training rows to %s and %d held-out rows to %s",
            manifests[0]["rows"],
            train_dir,
            manifests[1]["rows"],
            eval_dir,
        )
        return manifests[0], manifests[1]


# --- reading the source -------------------------------------------------------------------------


def _open_source(
    source: DatasetSource, work: Path
) -> tuple[dict[str, Any], str | None, dict[str, Any] | None]:
    """The source's splits ({name: datasets.Dataset}), resolved revision and text decoding."""
    location = source.location
    resolved = None
    if location.scheme == "hf":
        card = uris.hub_card_metadata(location, revision=source.hub_revision, repo_type="dataset")
        path, resolved = uris.hub_snapshot(
            location,
            revision=source.hub_revision,
            repo_type="dataset",
            allow_patterns=config_file_patterns(card, source.subset),
            parameter="uri",
        )
    else:
        path = uris.fetch(location, work / "source", parameter="uri")
    logger.info("Reading %s", location.display)
    splits, decoding = _load_path(path, source, work)
    return splits, resolved, decoding


def config_file_patterns(card: Mapping[str, Any], subset: str) -> list[str] | None:
    """The files of one dataset configuration, from a Hub card's `configs` metadata.

    Returns:
        Glob patterns (README included) that fetch only the chosen configuration's data files, or
        None (fetch the whole repository) when the card does not say or names no such subset.
    """
    configs = card.get("configs") if isinstance(card, Mapping) else None
    if not isinstance(configs, list) or not configs:
        return None
    chosen = None
    for config in configs:
        if not isinstance(config, Mapping):
            return None
        name = config.get("config_name", "default")
        if (subset and name == subset) or (
            not subset and (config.get("default") or len(configs) == 1)
        ):
            chosen = config
            break
    if chosen is None:
        return None  # datasets lists the configurations in its error
    data_files = chosen.get("data_files")
    patterns: list[str] = []
    if isinstance(data_files, str):
        patterns.append(data_files)
    elif isinstance(data_files, list):
        for entry in data_files:
            if isinstance(entry, str):
                patterns.append(entry)
            elif isinstance(entry, Mapping) and isinstance(entry.get("path"), (str, list)):
                paths = entry["path"]
                patterns.extend([paths] if isinstance(paths, str) else paths)
            else:
                return None
    elif isinstance(chosen.get("data_dir"), str):
        patterns.append(chosen["data_dir"].strip("/") + "/*")
    else:
        return None
    return ["README.md", *patterns]


def _builder_for(path: Path) -> tuple[str | None, str]:
    name = path.name.lower()
    for suffix in _COMPRESSIONS:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _BUILDERS.get(Path(name).suffix), Path(name).suffix


def _load_path(
    path: Path, source: DatasetSource, work: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The splits of a file or directory, and how a text file was decoded (None otherwise)."""
    import datasets

    cache = work / "cache"
    shown = source.location.display
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return dict(_load_from_disk(path, shown)), None
        if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
            loaded = _load_from_disk(path, shown)
            return {str(loaded.split) if loaded.split else "train": loaded}, None
        try:
            loaded = datasets.load_dataset(
                str(path), name=source.subset or None, cache_dir=str(cache)
            )
        except ValueError as error:
            if source.subset and "config" in str(error).lower():
                raise InputError(
                    [
                        f"`subset` {source.subset!r} is not a configuration of {shown!r}: "
                        f"{uris.redact(str(error))[:300]}"
                    ]
                ) from None
            raise _unreadable(shown, "a dataset directory", error) from None
        except Exception as error:
            raise _unreadable(shown, "a dataset directory", error) from None
        return dict(loaded), None
    builder, suffix = _builder_for(path)
    if builder is None:
        raise InputError(
            [
                f"`uri` {shown!r}: cannot tell the format of {path.name!r}; use a "
                f"{'/'.join(_BUILDERS)} file (optionally {'/'.join(_COMPRESSIONS)} compressed), "
                f"a save_to_disk directory or a Hub dataset"
            ]
        )
    if source.subset:
        raise InputError(
            [
                f"`subset` {source.subset!r} applies to Hub datasets and directories with several "
                f"configurations, not to the single file {shown!r}; leave it empty"
            ]
        )
    options: dict[str, Any] = {}
    decoding = None
    if builder in _TEXT_BUILDERS:
        path, decoding = _as_utf8(path, source.encoding, work / "decoded", shown)
    if builder == "csv":
        options = {"encoding": "utf-8"}
        if suffix == ".tsv":
            options["sep"] = "\t"
    logger.info("Parsing %s as %s", path.name, builder)
    try:
        loaded = datasets.load_dataset(
            builder, data_files={"train": str(path)}, cache_dir=str(cache), **options
        )
    except Exception as error:
        if _is_blank(path):
            raise InputError(
                [
                    f"`uri` {shown!r}: the file {path.name} is empty (no rows, only whitespace "
                    f"or nothing); point `uri` at a file with data"
                ]
            ) from None
        if builder == "json":
            line = _first_bad_json_line(path)
            if line is not None:
                number, reason = line
                raise InputError(
                    [
                        f"`uri` {shown!r}: line {number} of {path.name} is not valid JSON "
                        f"({reason}); fix or remove that line"
                    ]
                ) from None
        raise _unreadable(shown, f"a {builder} file", error) from None
    return dict(loaded), decoding


def _load_from_disk(path: Path, shown: str) -> Any:
    """A `save_to_disk` directory, its JSON files checked first so a damaged one is named.

    Raises:
        InputError: naming the file that does not parse, or the directory that does not load.
    """
    import datasets

    fix = "save the dataset again with save_to_disk, or copy it again"
    check_files_parse(path, parameter="uri", fix=fix, shown=shown)
    try:
        return datasets.load_from_disk(str(path))
    except Exception as error:  # a truncated .arrow file, a missing shard
        raise _unreadable(shown, "a save_to_disk directory", error, fix=fix) from None


def _as_utf8(
    path: Path, encoding: str, directory: Path, shown: str
) -> tuple[Path, dict[str, Any]]:
    """The file as UTF-8 text (itself when it already is), and a record of its decoding.

    Real files are often not clean UTF-8 (the demo corpus has stray latin-1 bytes). Bytes that
    `encoding` cannot decode become U+FFFD rather than failing the run, and that is said: a
    warning with the number of lines and the first, and `decoding` in the manifest.
    """
    import fsspec

    def decoded_lines() -> Iterator[str]:
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        with fsspec.open(str(path), "rb", compression="infer") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                yield decoder.decode(block)
            yield decoder.decode(b"", final=True)

    replaced_lines, first_line, line, open_line_replaced = 0, None, 1, False
    for text in decoded_lines():
        *complete, rest = text.split("\n")
        for piece in complete:
            if open_line_replaced or "\ufffd" in piece:
                replaced_lines += 1
                first_line = first_line or line
            line, open_line_replaced = line + 1, False
        open_line_replaced = open_line_replaced or "\ufffd" in rest
    if open_line_replaced:
        replaced_lines += 1
        first_line = first_line or line
    record: dict[str, Any] = {"encoding": encoding, "lines_with_replaced_bytes": replaced_lines}
    if replaced_lines:
        record["first_line_with_replaced_bytes"] = first_line
        logger.warning(
            "`uri` %r: %d line(s) of %s hold bytes that are not valid %s (first: line %d); they "
            "read as U+FFFD. If the file is in another encoding, set `encoding` (e.g. latin-1, "
            "cp1252)",
            shown,
            replaced_lines,
            path.name,
            encoding,
            first_line,
        )
    plain_utf8 = codecs.lookup(encoding).name == "utf-8"
    compressed = _builder_for(path)[1] != path.suffix.lower()
    if plain_utf8 and not replaced_lines:
        return path, record
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / (path.name if not compressed else Path(path.name).stem)
    with open(target, "w", encoding="utf-8", newline="") as out:
        for text in decoded_lines():
            out.write(text)
    return target, record


def _unreadable(shown: str, what: str, error: BaseException,
                fix: str = "check the file") -> BaseException:
    """The error to raise for a source that did not load: an InputError naming it and `fix`.

    A full disk (the datasets cache filling while it loads) is not the source's fault: that is a
    `DiskFullError`.
    """
    if is_disk_full(error):
        return DiskFullError(f"No space left on device while loading {shown!r} as {what} (into "
                             f"the step's datasets cache); {OUTPUT_DISK_FIX}")
    cause = error
    while cause.__cause__ is not None and type(cause).__name__ == "DatasetGenerationError":
        cause = cause.__cause__
    detail = " ".join(uris.redact(f"{type(cause).__name__}: {cause}").split())[:400]
    return InputError([f"`uri` {shown!r} could not be read as {what} ({detail}); {fix}"])


def _is_blank(path: Path) -> bool:
    """Whether the (possibly compressed) file holds nothing but whitespace."""
    import fsspec

    try:
        with fsspec.open(str(path), "rb", compression="infer") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                if block.strip():
                    return False
    except Exception:  # unreadable as compressed: not blank, the parser's error is reported
        return False
    return True


def _first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(1-based line number, reason) of the first line that is not a JSON value, if any."""
    import fsspec

    with fsspec.open(str(path), "rb", compression="infer") as handle:
        head = handle.read(1)
        handle.seek(0)
        if head == b"[":
            return None  # a JSON array document, not JSON Lines
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for number, raw in enumerate(handle, 1):
            line = decoder.decode(raw).strip()
            if not line:
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                return number, f"{error.msg} at column {error.colno}"
    return None


# --- selecting rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """Rows picked from one source split: `positions` index into `dataset` (sorted)."""

    expression: str
    split: str
    dataset: Any
    positions: Any  # numpy int64 array
    parameter: str = "split"

    @property
    def count(self) -> int:
        return int(len(self.positions))


def _select(splits: dict[str, Any], expression: str, parameter: str) -> _Rows:
    import numpy as np
    from datasets import ReadInstruction

    instruction = ReadInstruction.from_spec(expression.strip())
    name = instruction._relative_instructions[0].splitname
    if name not in splits:
        raise InputError(
            [
                f"`{parameter}` {expression!r} names the split {name!r}, which the data does not "
                f"have; available: {', '.join(sorted(splits))}"
            ]
        )
    dataset = splits[name]
    (absolute,) = instruction.to_absolute({name: len(dataset)})
    start, stop = absolute.from_, absolute.to
    if stop <= start:
        raise InputError(
            [
                f"`{parameter}` {expression!r} selects 0 rows (split {name!r} has "
                f"{len(dataset)}); choose a range inside it"
            ]
        )
    logger.info("Selected rows [%d, %d) of split %r (%d rows)", start, stop, name, len(dataset))
    return _Rows(expression, name, dataset, np.arange(start, stop, dtype=np.int64), parameter)


def _check_disjoint(train: _Rows, held_out: _Rows, source: DatasetSource) -> None:
    import numpy as np

    if train.split != held_out.split:
        return
    overlap = np.intersect1d(train.positions, held_out.positions, assume_unique=True)
    if overlap.size:
        raise InputError(
            [
                f"`eval_split` {source.eval_split!r} overlaps `split` {source.split!r} in "
                f"{overlap.size} rows (first at position {int(overlap[0])}); pick disjoint "
                f"ranges, e.g. split='{train.split}[:90%]', eval_split='{train.split}[90%:]'"
            ]
        )


def _hold_out(rows: _Rows, source: DatasetSource) -> tuple[_Rows, _Rows]:
    import numpy as np

    if source.eval_fraction <= 0:
        return rows, _Rows("", rows.split, rows.dataset, rows.positions[:0])
    held = max(1, round(rows.count * source.eval_fraction))
    if held >= rows.count:
        raise InputError(
            [
                f"`eval_fraction` {source.eval_fraction} of the {rows.count} row(s) selected by "
                f"`split` {source.split!r} leaves no training rows; select more rows or lower "
                f"`eval_fraction`"
            ]
        )
    order = np.random.default_rng(source.seed).permutation(rows.count)
    eval_positions = np.sort(rows.positions[order[:held]])
    train_positions = np.sort(rows.positions[order[held:]])
    return (
        _Rows(rows.expression, rows.split, rows.dataset, train_positions),
        _Rows(rows.expression, rows.split, rows.dataset, eval_positions),
    )


def _ranges(positions: Any) -> list[list[int]]:
    """Sorted positions -> [[start, stop), ...] runs."""
    import numpy as np

    if len(positions) == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(positions)]))
    return [
        [int(positions[a]), int(positions[b - 1]) + 1] for a, b in zip(starts, stops, strict=True)
    ]


# --- normalizing columns ------------------------------------------------------------------------


def _resolve_mapping(columns: list[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """Role -> source column; unmapped roles default to a column of the same name."""
    problems = Problems()
    resolved: dict[str, str] = {}
    available = ", ".join(columns)
    for role in ROLES:
        if role in mapping:
            column = mapping[role]
            if column not in columns:
                problems.add(
                    f"`column_mapping`[{role!r}] names the column {column!r}, which the data "
                    f"does not have; available columns: {available}"
                )
            else:
                resolved[role] = column
    used = set(resolved.values())
    for role in ROLES:
        if role not in mapping and role in columns and role not in used:
            resolved[role] = role
    if not problems and not ({"text", "prompt", "messages"} & set(resolved)):
        problems.add(
            f"`column_mapping` gives no text: map one of the roles text, prompt or messages to a "
            f"column, e.g. {{'text': '<column>'}}; available columns: {available}"
        )
    if "completion" in resolved and "prompt" not in resolved and not problems:
        problems.add(
            f"`column_mapping` maps completion but not prompt; add {{'prompt': '<column>'}}; "
            f"available columns: {available}"
        )
    problems.raise_if_any()
    return resolved


def _normalize(rows: _Rows, columns: dict[str, str]) -> Any:
    """The rows' mapped columns as a pyarrow Table with canonical names."""
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = [column for column in columns.values() if column not in rows.dataset.column_names]
    if missing:
        raise InputError(
            [
                f"`{rows.parameter}` {rows.expression!r}: split {rows.split!r} lacks the column(s) "
                f"{', '.join(map(repr, missing))} that the training rows have; available columns: "
                f"{', '.join(rows.dataset.column_names)}"
            ]
        )
    subset = rows.dataset.select_columns(list(dict.fromkeys(columns.values())))
    table = subset.with_format("arrow").select(rows.positions.tolist())[:]
    if not isinstance(table, pa.Table):
        table = pa.table(table)
    out = {}
    problems = Problems()
    for role, column in columns.items():
        values = table.column(column)
        nulls = values.null_count
        if nulls:
            first = int(pc.index(pc.is_null(values), True).as_py())
            problems.add(
                f"`column_mapping`[{role!r}]: column {column!r} has {nulls} missing value(s) in "
                f"the rows of `{rows.parameter}` "
                f"(first at position {int(rows.positions[first])}); clean the data or select "
                f"other rows"
            )
            continue
        if _is_json_column(values):
            values, problem = _plain_column(values, role, column, rows)
            if problem:
                problems.add(problem)
                continue
        if role in _STRING_ROLES and not (role in _CHAT_ROLES and _is_messages(values.type)):
            if values.type != pa.string():
                try:
                    values = values.cast(pa.string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    problems.add(
                        f"`column_mapping`[{role!r}]: column {column!r} holds {values.type}, not "
                        f"text; map a text column"
                    )
                    continue
        if role == "messages" and not _is_messages(values.type):
            problems.add(
                f"`column_mapping`['messages']: column {column!r} holds {values.type}; it must be "
                f"a list of {{role, content}} objects"
            )
            continue
        out[role] = values
    problems.raise_if_any()
    return pa.table(out)


def _is_json_column(values: Any) -> bool:
    """Whether `datasets` kept the column as JSON text (its values are of mixed kinds)."""
    return getattr(values.type, "extension_name", "") == "arrow.json"


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "numbers"
    return "lists" if isinstance(value, list) else "objects"


def _plain_column(values: Any, role: str, column: str, rows: _Rows | None) -> tuple[Any, str]:
    """A JSON-text column as plain values of one kind, or the problem: which kinds, where.

    `datasets` keeps a JSON column whose rows hold different kinds of value (text in some rows,
    numbers in others) as JSON text; labels and text must be of one kind.
    """
    import pyarrow as pa

    decoded = [json.loads(value) if value is not None else None for value in
               values.cast(values.type.storage_type).to_pylist()]
    first: dict[str, tuple[int, Any]] = {}
    for index, value in enumerate(decoded):
        if value is not None:
            first.setdefault(_kind(value), (index, value))
    kinds = set(first)
    if role in _STRING_ROLES and kinds <= {"text", "numbers"}:
        # A number where text is expected reads as its text, as a CSV reader would give it.
        return pa.chunked_array([pa.array(
            [value if isinstance(value, str) or value is None else json.dumps(value)
             for value in decoded], type=pa.string())]), ""
    if role == "label" and len(kinds) == 1 and kinds <= {"text", "numbers"}:
        return pa.chunked_array([pa.array(decoded)]), ""
    where = "" if rows is None else f" in the rows of `{rows.parameter}`"

    def position(index: int) -> int:
        return int(rows.positions[index]) if rows is not None else index

    examples = ", ".join(
        f"{kind} such as {value!r} (row {position(index)})"
        for kind, (index, value) in sorted(first.items())
    )
    fix = (
        "labels must be all class names or all class ids 0..n-1: quote the numbers "
        "(\"1\") or write every label as a name"
        if role == "label"
        else "it must hold text in every row"
    )
    return values, (
        f"`column_mapping`[{role!r}]: column {column!r} mixes {' and '.join(sorted(kinds))}"
        f"{where}: {examples}; {fix}"
    )


def _is_messages(arrow_type: Any) -> bool:
    import pyarrow as pa

    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    item = arrow_type.value_type
    return pa.types.is_struct(item) and {"role", "content"} <= {f.name for f in item}


def _full_split_labels(parts: list[_Rows], column: str | None) -> list[Any]:
    """The label column of every source split the rows come from (whole splits, not slices)."""
    if column is None:
        return []
    seen, columns = set(), []
    for rows in parts:
        if rows.split not in seen:
            seen.add(rows.split)
            table = rows.dataset.select_columns([column]).with_format("arrow")[:]
            values = table.column(column)
            if _is_json_column(values):
                values, problem = _plain_column(values, "label", column, None)
                if problem:
                    raise InputError([problem.replace(":", f" (split {rows.split!r}):", 1)])
            columns.append(values)
    return columns


def _encode_labels(
    train: Any, held_out: Any, feature: Any, whole_splits: list[Any]
) -> tuple[Any, Any, Any, Any]:
    """Labels -> int64 ids 0..n-1. Returns (label_names, num_labels, train, held_out).

    Class names and counts come from the whole source split(s), not just the selected rows, so
    the same data gives the same label ids whatever slice a run takes.
    """
    import pyarrow as pa
    from datasets import ClassLabel

    if "label" not in train.column_names:
        return None, None, train, held_out
    tables = [table for table in (train, held_out) if table is not None]
    label_type = train.schema.field("label").type
    names = None
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        num_labels = len(names)
    elif pa.types.is_string(label_type) or pa.types.is_large_string(label_type):
        names, tables = _string_labels_as_ids(tables, label_type, whole_splits)
        num_labels = len(names)
    elif (
        pa.types.is_integer(label_type)
        or pa.types.is_boolean(label_type)
        or pa.types.is_floating(label_type)
    ):
        num_labels = _count_numeric_classes(tables, label_type, whole_splits)
    else:
        raise InputError(
            [
                f"`column_mapping`['label'] holds {label_type}; labels must be class names "
                f"(strings) or class ids 0..n-1"
            ]
        )
    tables = [
        table.set_column(
            table.schema.get_field_index("label"), "label", table.column("label").cast(pa.int64())
        )
        for table in tables
    ]
    return names, num_labels, tables[0], (tables[1] if held_out is not None else None)


def _string_labels_as_ids(
    tables: list[Any], label_type: Any, whole_splits: list[Any]
) -> tuple[list[Any], list[Any]]:
    """Class names (sorted, from the whole splits) and the tables with their ids as labels."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = set()
    for column in whole_splits or [table.column("label") for table in tables]:
        values.update(pc.unique(column).drop_null().to_pylist())
    names = sorted(values)
    lookup = pa.array(names, type=label_type)
    tables = [
        table.set_column(
            table.schema.get_field_index("label"),
            "label",
            pc.index_in(table.column("label"), value_set=lookup).cast(pa.int64()),
        )
        for table in tables
    ]
    return names, tables


def _count_numeric_classes(tables: list[Any], label_type: Any, whole_splits: list[Any]) -> int:
    """The number of classes of numeric labels (ids 0..n-1), refusing fractions and negatives."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lows, highs = [], []
    for table in tables:
        column = table.column("label")
        if pa.types.is_floating(label_type):
            fractional = pc.any(pc.not_equal(column, pc.floor(column))).as_py()
            if fractional:
                raise InputError(
                    [
                        "`column_mapping`['label'] holds fractional numbers; labels must be "
                        "class names or class ids 0..n-1 (regression is not supported)"
                    ]
                )
        bounds = pc.min_max(column.cast(pa.int64()))
        lows.append(bounds["min"].as_py())
        highs.append(bounds["max"].as_py())
    low = min(value for value in lows if value is not None)
    if low < 0:
        raise InputError(
            [
                f"`column_mapping`['label'] holds class ids below 0 (minimum {low}); labels "
                f"must be class names or ids 0..n-1"
            ]
        )
    for column in whole_splits:
        if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
            highs.append(pc.max(column.cast(pa.int64())).as_py())
    return max(value for value in highs if value is not None) + 1


# --- writing ------------------------------------------------------------------------------------


def _write_part(
    stage: Path,
    table: Any,
    *,
    part: str,
    rows: _Rows,
    source: DatasetSource,
    resolved: str | None,
    columns: dict[str, str],
    label_names: list[str] | None,
    num_labels: int | None,
    selection: dict[str, Any],
    decoding: dict[str, Any] | None,
) -> dict[str, Any]:
    import pyarrow.parquet as pq

    data_path = stage / DATA_FILE
    pq.write_table(table, data_path)
    digest = hashlib.sha256()
    with open(data_path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    split = rows.expression or source.split
    manifest = {
        "kind": "dataset",
        "part": part,
        "source": {
            "uri": source.location.display,
            "revision": source.hub_revision or None,
            "resolved_revision": resolved,
            "subset": source.subset or None,
            "split": split,
        },
        "source_split": rows.split,
        "rows": table.num_rows,
        "columns": list(table.column_names),
        "column_mapping": {role: columns[role] for role in table.column_names},
        "label_names": label_names,
        "num_labels": num_labels,
        "fingerprint": "sha256:" + digest.hexdigest(),
        "row_ranges": _ranges(rows.positions),
        "selection": selection,
    }
    if decoding is not None:
        manifest["decoding"] = decoding
    write_manifest(stage, manifest)
    return manifest
