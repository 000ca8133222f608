"""The trainer's progress reporters: the Trainer's status endpoint, best effort."""

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kftune.components.train_lora.pod.progress import (
    STATUS_URL_ENV,
    Position,
    TrainerStatusReporter,
    reporters_from_env,
    trainer_status,
)
from kftune.components.train_lora.step.backends.local import free_port

RECORD = {"step": 5, "loss": 1.25, "learning_rate": 1e-4, "grad_norm": None, "epoch": 0.5,
          "tokens_per_second": 1234.5}


def test_without_the_trainers_variables_nothing_reports(monkeypatch):
    monkeypatch.delenv(STATUS_URL_ENV, raising=False)
    assert reporters_from_env(is_main=True) == []
    monkeypatch.setenv(STATUS_URL_ENV, "http://127.0.0.1:9/status")
    assert reporters_from_env(is_main=False) == []  # only global rank 0 reports


def test_a_status_has_the_crds_shape():
    status = trainer_status(RECORD, Position(5, 20, 61.7))
    assert status["progressPercentage"] == 25 and status["estimatedRemainingSeconds"] == 61
    names = [metric["name"] for metric in status["metrics"]]
    assert names == ["loss", "learning_rate", "tokens_per_second", "epoch", "step", "total_steps"]
    assert all(isinstance(metric["value"], str) and 0 < len(metric["value"]) <= 64
               for metric in status["metrics"])


class Recorder(BaseHTTPRequestHandler):
    bodies: list = []
    code = 200

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        type(self).bodies.append((self.headers.get("Authorization"),
                                  json.loads(self.rfile.read(length))))
        self.send_response(type(self).code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    Recorder.bodies, Recorder.code = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/status"
    server.shutdown()


def test_the_latest_status_is_posted_with_the_token_and_the_end_is_100(endpoint, tmp_path):
    (tmp_path / "token").write_text("secret-token\n")
    reporter = TrainerStatusReporter(endpoint, str(tmp_path / "token"), min_interval=60)
    reporter.step({**RECORD, "step": 1}, Position(1, 10, 10.0))
    deadline = time.monotonic() + 5
    while not Recorder.bodies and time.monotonic() < deadline:
        time.sleep(0.01)
    for step in range(2, 6):  # within the interval: held back, each replacing the last
        reporter.step({**RECORD, "step": step}, Position(step, 10, 10.0))
    reporter.close({"steps": 10})

    authorizations = {authorization for authorization, _ in Recorder.bodies}
    progress = [body["trainerStatus"]["progressPercentage"] for _, body in Recorder.bodies]
    assert authorizations == {"Bearer secret-token"}
    # The first step at once; then, within the interval, only the latest, at the end: 100 %.
    assert progress == [10, 100]


@pytest.mark.parametrize("unreachable", ["refused", "401"])
def test_an_unreachable_endpoint_warns_once_and_training_goes_on(endpoint, unreachable, caplog):
    caplog.set_level(logging.DEBUG, logger="kftune.trainer")
    Recorder.code = 401
    url = endpoint if unreachable == "401" else f"http://127.0.0.1:{free_port()}/status"
    reporter = TrainerStatusReporter(url, min_interval=0)
    for step in range(1, 4):
        reporter.step(RECORD, Position(step, 3, 1.0))
    reporter.close({"steps": 3})

    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "training goes on" in warnings[0].getMessage()
