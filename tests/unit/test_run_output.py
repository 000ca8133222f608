"""`kftune run`'s output directory (locked, unique, marked incomplete) and what it prints."""

import io
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kftune.pipelines import run as run_module
from kftune.pipelines.cli import main
from kftune.pipelines.errors import CliError
from kftune.pipelines.run import (
    QuietFilter,
    RunDirectory,
    _OutputTail,
    new_run_dir,
    step_error,
)
from kftune.pipelines.run_output import StepCounter, planned_steps

S = "    "  # kfp.local's indent of a step's output


@dataclass
class ErrorCase:
    name: str
    lines: list[str]
    expected: str


NODE_TAIL = [
    f"{S}RuntimeError: training failed on node 0 of 1: InputError: `lora_config.target_modules`"
    " ['nope'] match no layer",
    f"{S}last 3 log lines of node 0:",
    f"{S}Traceback (most recent call last):",
    f'{S}  File "torch/distributed/run.py", line 1032, in <module>',
    f"{S}torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
]
ERROR_CASES = [
    ErrorCase("input error with its problem lines", [
        "04:09:24.422 - INFO - Executing task 'download-dataset'",
        f"{S}Traceback (most recent call last):",
        f'{S}  File "kfp/dsl/executor_main.py", line 109, in <module>',
        f"{S}kftune.components.common.errors.InputError: 2 problems:",
        f"{S}  - `uri` /x.csv does not exist",
        f"{S}  - `split` 'nope' is not a split",
        "",
        "04:09:26.882 - ERROR - Task 'download-dataset' finished with status FAILURE",
    ], "InputError: 2 problems: - `uri` /x.csv does not exist - `split` 'nope' is not a split"),
    ErrorCase("a quoted node log's exceptions are not the step's", [
        "04:09:31.782 - INFO - Executing task 'train-lora'",
        f"{S}Traceback (most recent call last):",
        f'{S}  File "launch.py", line 148, in run_training',
        *NODE_TAIL,
    ], "RuntimeError: training failed on node 0 of 1: InputError: `lora_config.target_modules`"
       " ['nope'] match no layer"),
    ErrorCase("of chained exceptions the last", [
        f"{S}Traceback (most recent call last):",
        f'{S}  File "a.py", line 1, in f',
        f"{S}OSError: [Errno 28] No space left on device",
        "",
        f"{S}The above exception was the direct cause of the following exception:",
        "",
        f"{S}Traceback (most recent call last):",
        f'{S}  File "b.py", line 2, in g',
        f"{S}RuntimeError: could not publish the adapter",
    ], "RuntimeError: could not publish the adapter"),
    ErrorCase("only the last task counts", [
        "04:00:00.000 - INFO - Executing task 'a'",
        f"{S}Traceback (most recent call last):",
        f"{S}ValueError: an old one",
        "04:00:01.000 - INFO - Executing task 'b'",
        f"{S}Traceback (most recent call last):",
        f"{S}KeyError: 'x'",
    ], "KeyError: 'x'"),
    ErrorCase("without a traceback, the last exception line", [
        "something", "RuntimeError: it broke", "more",
    ], "RuntimeError: it broke"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda case: case.name)
def test_step_error_quotes_the_exception_that_ended_the_step(case):
    assert step_error(case.lines) == case.expected


@dataclass
class QuietCase:
    name: str
    lines: list[str]
    shown: list[str] = field(default_factory=list)


EXECUTOR = f"{S}[KFP Executor 2026-12-02 04:01:29,045 INFO]: "
QUIET_CASES = [
    QuietCase("the executor input dump and launcher notes are hidden", [
        f"{EXECUTOR}Looking for component `train_lora` in --component_module_path `/tmp/x.py`",
        f"{EXECUTOR}Got executor_input:",
        f"{S}{{", f'{S}    "inputs": {{', f'{S}        "x": 1', f"{S}    }}", f"{S}}}",
        f"{EXECUTOR}started 1 local node(s)",
        f"{EXECUTOR}Wrote executor output file to /tmp/out.json.",
    ], [f"{EXECUTOR}started 1 local node(s)"]),
    QuietCase("task outputs are hidden up to the separator", [
        "04:01:21.904 - INFO - Task 'download-dataset' finished with status SUCCESS",
        "04:01:21.904 - INFO - Task 'download-dataset' outputs:",
        f"{S}train_data: Dataset( name='train_data',",
        f"{S}                     uri='/tmp/x')",
        "-" * 80,
        "04:01:21.905 - INFO - Executing task 'download-model'",
    ], ["04:01:21.904 - INFO - Task 'download-dataset' finished with status SUCCESS",
        "-" * 80, "04:01:21.905 - INFO - Executing task 'download-model'"]),
    QuietCase("the executor's traceback and the error it quotes are hidden", [
        f"{S}Traceback (most recent call last):",
        f'{S}  File "launch.py", line 1, in f',
        *NODE_TAIL,
        "",
        "04:04:08.392 - ERROR - Task 'train-lora' finished with status FAILURE",
    ], ["04:04:08.392 - ERROR - Task 'train-lora' finished with status FAILURE"]),
    QuietCase("a node's traceback and torchrun's failure report are hidden", [
        f"{EXECUTOR}[node-0] step 1/4 (25.0%) | loss 1.1",
        f"{EXECUTOR}[node-0] E1202 04:04:07.629000 21761 torch/distributed/elastic/api.py:1002]"
        " failed (exitcode: 2)",
        f"{EXECUTOR}[node-0] Traceback (most recent call last):",
        f'{EXECUTOR}[node-0]   File "run.py", line 1032, in <module>',
        f"{EXECUTOR}[node-0]     main()",
        f"{EXECUTOR}[node-0] torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        f"{EXECUTOR}[node-0] " + "=" * 60,
        f"{EXECUTOR}[node-0] kftune.components.train_lora.pod.trainer FAILED",
        f"{EXECUTOR}[node-0]   exitcode  : 2 (pid: 22021)",
        f"{EXECUTOR}[node-0] " + "=" * 60,
        f"{EXECUTOR}[node-1] step 2/4 (50.0%) | loss 1.0",
    ], [f"{EXECUTOR}[node-0] step 1/4 (25.0%) | loss 1.1",
        f"{EXECUTOR}[node-1] step 2/4 (50.0%) | loss 1.0"]),
    QuietCase("kfp.local's skipped condition groups are hidden", [
        "04:05:10.100 - INFO - Skipping conditional task condition-4 (condition not met)",
        "04:05:10.101 - INFO - Skipping task register-model: upstream task(s) skipped",
        "04:05:10.102 - INFO - Pipeline 'lora-finetune' finished with status SUCCESS",
    ], ["04:05:10.102 - INFO - Pipeline 'lora-finetune' finished with status SUCCESS"]),
    QuietCase("a worker's own traceback (torchrun's [rankN]: prefix) is hidden", [
        f"{EXECUTOR}[node-0] [rank0]: Traceback (most recent call last):",
        f'{EXECUTOR}[node-0] [rank0]:   File "trainer.py", line 884, in <module>',
        f"{EXECUTOR}[node-0] [rank0]: RuntimeError: Connection closed by peer",
        f"{EXECUTOR}[node-1] step 3/4 (75.0%) | loss 0.9",
    ], [f"{EXECUTOR}[node-1] step 3/4 (75.0%) | loss 0.9"]),
]


@pytest.mark.parametrize("case", QUIET_CASES, ids=lambda case: case.name)
def test_quiet_output_hides_the_launcher_internals(case):
    quiet = QuietFilter()
    assert [line for line in case.lines if quiet.keep(line)] == case.shown


def test_default_run_directories_are_unique_within_one_second(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "_utc_stamp", lambda: "20261202-040000")
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(new_run_dir(tmp_path / "runs")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 8 and all(path.is_dir() for path in made)
    assert sorted(path.name for path in made)[:2] == ["20261202-040000", "20261202-040000-2"]


HOLD_LOCK = """
import fcntl, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.write("pid 4242, started now UTC\\n"); lock.flush()
print("locked", flush=True)
time.sleep(3600)  # until the fixture kills it
"""


@pytest.fixture
def held_directory(tmp_path):
    directory = tmp_path / "out"
    directory.mkdir()
    lock = directory / ".kftune-run.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield directory
    holder.kill()
    holder.wait()


def test_a_second_run_into_a_directory_in_use_is_refused_before_any_step(held_directory, capsys):
    code = main(["run", "--output-dir", str(held_directory)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[0] == (f"kftune run: error: `--output-dir` {held_directory} is in use by another "
                      "kftune run (pid 4242, started now UTC); two runs into one directory would "
                      "overwrite each other's results")
    assert err[1].startswith("hint: give each run its own --output-dir")
    assert not (held_directory / "artifacts").exists()


def test_a_finished_run_is_not_overwritten(tmp_path):
    first = RunDirectory(tmp_path / "out")
    first.acquire()
    assert (tmp_path / "out" / "INCOMPLETE").is_file()
    first.complete({"tuned": {"accuracy": 0.9}})
    first.release()
    assert not (tmp_path / "out" / "INCOMPLETE").exists()

    with pytest.raises(CliError, match=r"already holds a finished run \(summary.json\)"):
        RunDirectory(tmp_path / "out").acquire()
    assert '"accuracy": 0.9' in (tmp_path / "out" / "summary.json").read_text()


def test_a_failed_run_leaves_its_reason_and_frees_the_directory(tmp_path):
    failed = RunDirectory(tmp_path / "out")
    failed.acquire()
    failed.mark_incomplete("step 'train-lora' failed: OSError: disk full")
    failed.release()
    assert "step 'train-lora' failed" in (tmp_path / "out" / "INCOMPLETE").read_text()
    again = RunDirectory(tmp_path / "out")
    again.acquire()  # a new attempt may reuse a directory that holds no finished run
    again.release()


def test_evaluation_logs_its_progress_and_its_end(monkeypatch, caplog):
    from kftune.components.evaluate import evaluation

    caplog.set_level("INFO", logger=evaluation.logger.name)
    ticks = iter([0.0, 1.0, 6.5, 9.0])
    monkeypatch.setattr(evaluation.time, "monotonic", lambda: next(ticks))
    progress = evaluation.Progress("base model", 96)
    for _ in range(3):
        progress.advance(32)

    # A line once 5 s have passed since the last, and one at the end.
    assert [record.getMessage() for record in caplog.records] == [
        "base model: 64/96 rows (67%), 6 s", "base model: 96/96 rows (100%), 9 s"]


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [False, True], ids=["file or pipe", "terminal"])
@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "debug"])
def test_steps_are_numbered_and_colour_only_reaches_a_terminal(tty, quiet):
    stream = Stream(tty)
    tail = _OutputTail(stream, quiet=quiet, counter=StepCounter(4))
    cyan, reset = "\x1b[96m", "\x1b[0m"
    for name in ("download-dataset", "download-model"):
        tail.write(f"04:01:21.905 - INFO - Executing task {cyan}'{name}'{reset}\n")

    expected = [f"04:01:21.905 - INFO - [1/4] Executing task {cyan}'download-dataset'{reset}",
                f"04:01:21.905 - INFO - [2/4] Executing task {cyan}'download-model'{reset}"]
    if not tty:
        expected = [line.replace(cyan, "").replace(reset, "") for line in expected]
    assert stream.getvalue().splitlines() == expected


@pytest.mark.parametrize("arguments,expected", [
    ({}, 4), ({"merge": True}, 5), ({"register": True}, 5), ({"merge": True, "register": True}, 6),
    ({"benchmark_tasks": "hellaswag"}, 5),
], ids=["defaults", "merge", "register", "merge and register", "a benchmark"])
def test_the_step_total_counts_the_steps_the_switches_turn_on(arguments, expected):
    from google.protobuf import json_format
    from kftune.pipelines.lora_finetune import make_pipeline

    spec = json_format.MessageToDict(make_pipeline(download_retries=0).pipeline_spec)
    assert planned_steps(spec, arguments) == expected


def test_kfp_locals_root_logger_notes_are_hidden_without_debug(caplog):
    # kfp.local logs its skipped switches and its workspace clean-up on the root logger (the demo
    # printed four "INFO root: Skipping conditional task condition-N" lines after its last step).
    import logging

    caplog.set_level(logging.INFO)
    try:
        run_module.configure_logging(debug=False)
        logging.info("Skipping conditional task condition-7 (condition evaluated to False)")
        logging.info("Cleaned up workspace: /tmp/runs/x/workspace")
        logging.getLogger("kftune").info("Output directory: /tmp/runs/x")
        run_module.configure_logging(debug=True)
        logging.info("Skipping conditional task condition-8 (condition evaluated to False)")
    finally:
        run_module.configure_logging(debug=True)  # no filter left for the other tests
    assert [record.getMessage() for record in caplog.records] == [
        "Output directory: /tmp/runs/x",
        "Skipping conditional task condition-8 (condition evaluated to False)"]
