"""The pod entrypoint's staging: inputs once per pod (or per job on a shared claim), output last."""

import json
import threading
import time

from kftune.components.common.artifacts import write_manifest
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
    marker = json.loads((stage / pod.STAGED_MARKER).read_text())
    assert marker == {"model": str(model), "data": str(data)}
    # A restarted container finds the marker and stages nothing again.
    again = pod.stage_inputs("s3://never/used", "s3://never/used", stage,
                             wait_for_other_node=False)
    assert again == first


def test_other_nodes_wait_for_node_zero_on_a_shared_claim(tmp_path, monkeypatch):
    model = artifact(tmp_path / "model", "model")
    data = artifact(tmp_path / "data", "dataset")
    stage = tmp_path / "claim" / "inputs"
    monkeypatch.setattr(pod, "STAGE_POLL_SECONDS", 0.01)
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
    model_dir, data_dir = pod.stage_inputs(
        str(model), f"file://{csv}", stage, wait_for_other_node=False,
        data_source={"split": "train[:6]", "column_mapping": {"text": "review", "label": "stars"}},
    )
    assert model_dir == model and data_dir == stage / "data"
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert (manifest["kind"], manifest["rows"], manifest["row_ranges"]) == ("dataset", 6, [[0, 6]])
    assert manifest["source"]["split"] == "train[:6]"
    assert (manifest["label_names"], manifest["num_labels"]) == (["bad", "good", "ok"], 3)
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "data.parquet")
    assert table.column_names == ["text", "label"]
    assert table.column("text").to_pylist()[:2] == ["review 0", "review 1"]
    # Staged once: a restarted container reuses it without fetching again.
    assert pod.stage_inputs("hf://never/used", "hf://never/used", stage,
                            wait_for_other_node=False, data_source={}) == (model_dir, data_dir)
