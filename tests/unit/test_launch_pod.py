"""The pod entrypoint's staging: inputs once per pod (or per job on a shared claim), keyed by what
they are made from, output last."""

import json
import logging
import threading
import time

import pytest
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from kftune.components.train_lora.pod import entrypoint as pod


def artifact(directory, kind):
    directory.mkdir(parents=True)
    (directory / "payload.bin").write_bytes(b"x" * 10)
    write_manifest(directory, {"kind": kind})
    return directory


def test_local_inputs_are_read_in_place_and_staged_once(tmp_path):
    model = artifact(tmp_path / "model", "model")
    data = artifact(tmp_path / "data", "dataset")
    stage = tmp_path / "work" / "inputs"

    first = pod.stage_inputs(str(model), f"file://{data}", stage, wait_for_other_node=False)
    assert first == (model, data)
    key = pod.staging_key(str(model), f"file://{data}")
    marker = json.loads((stage / key / pod.STAGED_MARKER).read_text())
    assert (marker["model"], marker["data"]) == (str(model), str(data))
    # A restarted container finds the marker and stages nothing again.
    model.rename(tmp_path / "moved")
    again = pod.stage_inputs(str(model), f"file://{data}", stage, wait_for_other_node=False)
    assert again == first


def test_other_nodes_wait_for_node_zero_on_a_shared_claim(tmp_path, monkeypatch):
    model = artifact(tmp_path / "model", "model")
    data = artifact(tmp_path / "data", "dataset")
    stage = tmp_path / "claim" / "inputs"
    monkeypatch.setattr(pod, "STAGE_POLL_SECONDS", 0.01)
    # An earlier job on the claim staged other data: a node of this job waits for ITS inputs.
    pod.stage_inputs(str(model), str(artifact(tmp_path / "old", "dataset")), stage,
                     wait_for_other_node=False)
    results = {}
    waiter = threading.Thread(target=lambda: results.setdefault(
        "node1", pod.stage_inputs(str(model), str(data), stage, wait_for_other_node=True)))
    waiter.start()
    time.sleep(0.05)
    assert "node1" not in results  # still waiting
    results["node0"] = pod.stage_inputs(str(model), str(data), stage, wait_for_other_node=False)
    waiter.join(timeout=5)
    assert results["node1"] == results["node0"] == (model, data)


def test_upload_to_a_local_uri_is_atomic_and_complete(tmp_path):
    final = artifact(tmp_path / "final", "adapter")
    target = tmp_path / "out" / "adapter"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("from an earlier attempt")

    pod.upload_directory(final, str(target))

    assert sorted(path.name for path in target.iterdir()) == ["manifest.json", "payload.bin"]


def test_one_pod_claims_a_one_time_job_and_keeps_it_across_restarts(tmp_path, monkeypatch):
    path = tmp_path / "stage.claim"
    monkeypatch.setattr(pod.socket, "gethostname", lambda: "job-worker-0")
    assert pod.claim(path) is True
    assert pod.claim(path) is True  # the same pod after a container restart
    monkeypatch.setattr(pod.socket, "gethostname", lambda: "job-worker-1")
    assert pod.claim(path) is False



def test_sources_are_fetched_like_the_download_steps_do(tmp_path):
    """A pod given a source instead of an artifact fetches it with download_dataset's code (split
    slice, column mapping, label encoding, manifest); the trainers read the result as an artifact.
    (The model's twin, which loads the model in a child process, is in tests/local.)"""
    csv = tmp_path / "reviews.csv"
    csv.write_text("review,stars\n" + "".join(
        f"review {index},{['bad', 'ok', 'good'][index % 3]}\n" for index in range(10)))
    model = tmp_path / "model"
    model.mkdir()
    write_manifest(model, {"kind": "model"})
    stage = tmp_path / "stage"
    source = {"split": "train[:6]", "column_mapping": {"text": "review", "label": "stars"}}
    model_dir, data_dir = pod.stage_inputs(
        str(model), f"file://{csv}", stage, wait_for_other_node=False, data_source=source,
    )
    key = pod.staging_key(str(model), f"file://{csv}", data_source=source)
    assert model_dir == model and data_dir == stage / key / "data"
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert (manifest["kind"], manifest["rows"], manifest["row_ranges"]) == ("dataset", 6, [[0, 6]])
    assert manifest["source"]["split"] == "train[:6]"
    assert (manifest["label_names"], manifest["num_labels"]) == (["bad", "good", "ok"], 3)
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "data.parquet")
    assert table.column_names == ["text", "label"]
    assert table.column("text").to_pylist()[:2] == ["review 0", "review 1"]
    # Staged once: a restarted container reuses it without fetching again.
    csv.unlink()
    assert pod.stage_inputs(str(model), f"file://{csv}", stage, wait_for_other_node=False,
                            data_source=source) == (model_dir, data_dir)


def _reviews_csv(tmp_path):
    csv = tmp_path / "reviews.csv"
    csv.write_text("review,stars,title\n" + "".join(
        f"review {index},{['bad', 'ok', 'good'][index % 3]},title {index}\n"
        for index in range(10)))
    model = tmp_path / "model"
    model.mkdir()
    write_manifest(model, {"kind": "model"})
    return model, csv


def test_a_rerun_with_other_settings_stages_afresh_and_a_reuse_says_what(tmp_path, caplog):
    """A local TrainingClient.train rerun under the same name reuses its work dir: what it
    staged for one column_mapping must not be read for another (#21 item 5)."""
    model, csv = _reviews_csv(tmp_path)
    stage = tmp_path / "stage"
    first_source = {"split": "train[:6]", "column_mapping": {"text": "review", "label": "stars"}}
    _, first = pod.stage_inputs(str(model), str(csv), stage, wait_for_other_node=False,
                                data_source=first_source)
    other_source = {"split": "train[:4]", "column_mapping": {"text": "title", "label": "stars"}}
    _, second = pod.stage_inputs(str(model), str(csv), stage, wait_for_other_node=False,
                                 data_source=other_source)
    manifest = json.loads((second / "manifest.json").read_text())
    assert (manifest["rows"], manifest["source"]["split"]) == (4, "train[:4]")
    import pyarrow.parquet as pq

    assert pq.read_table(second / "data.parquet").column("text").to_pylist()[0] == "title 0"
    # The first staging is replaced, not kept beside it.
    assert not first.exists()
    assert [entry.name for entry in stage.iterdir()] == [second.parent.name]

    caplog.set_level(logging.INFO, logger="kftune.pod")
    again = pod.stage_inputs(str(model), str(csv), stage, wait_for_other_node=False,
                             data_source=dict(reversed(other_source.items())))
    assert again == (model, second)
    (reuse,) = [record.getMessage() for record in caplog.records
                if record.getMessage().startswith("reusing")]
    assert str(csv) in reuse and "'train[:4]'" in reuse and "'title'" in reuse


def test_a_failed_staging_leaves_nothing_half_written_and_keeps_the_previous_one(tmp_path):
    model, csv = _reviews_csv(tmp_path)
    stage = tmp_path / "stage"
    good = {"column_mapping": {"text": "review", "label": "stars"}}
    staged = pod.stage_inputs(str(model), str(csv), stage, wait_for_other_node=False,
                              data_source=good)
    bad = {"column_mapping": {"text": "no_such_column"}}
    with pytest.raises(InputError, match="no_such_column"):
        pod.stage_inputs(str(model), str(csv), stage, wait_for_other_node=False, data_source=bad)
    assert [entry.name for entry in stage.iterdir()] == [staged[1].parent.name]
    assert pod.stage_inputs(str(model), str(csv), stage, wait_for_other_node=False,
                            data_source=good) == staged


BASE = {"model_uri": "hf://org/model", "data_uri": "s3://bucket/data.csv",
        "model_source": {"revision": "main", "task": "causal-lm"},
        "data_source": {"split": "train", "column_mapping": {"text": "a"}}}


@pytest.mark.parametrize(("change", "same"), [
    ({}, True),
    ({"data_source": {"column_mapping": {"text": "a"}, "split": "train"}}, True),
    ({"model_uri": "hf://org/other"}, False),
    ({"data_uri": "s3://bucket/other.csv"}, False),
    ({"data_source": {"split": "train[:10]", "column_mapping": {"text": "a"}}}, False),
    ({"data_source": {"split": "train", "column_mapping": {"text": "b"}}}, False),
    ({"data_source": {"split": "train", "column_mapping": {"text": "a"}, "subset": "x"}},
     False),
    ({"data_source": {"split": "train", "column_mapping": {"text": "a"},
                      "encoding": "latin-1"}}, False),
    ({"model_source": {"revision": "v2", "task": "causal-lm"}}, False),
    ({"model_source": None}, False),
    ({"data_source": None}, False),
], ids=["same", "same-in-another-order", "model-uri", "data-uri", "split", "column-mapping",
        "subset", "encoding", "revision", "model-as-artifact", "data-as-artifact"])
def test_staging_key_follows_every_input(change, same):
    assert (pod.staging_key(**{**BASE, **change}) == pod.staging_key(**BASE)) is same
