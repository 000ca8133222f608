"""The benchmark step's checks (before any model loads), its metric naming and its report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kftune.components.benchmark import harness, tasks
from kftune.components.benchmark.demo_task import TASK_NAME, write_sentiment_task
from kftune.components.common.artifacts import write_manifest
from kftune.components.common.errors import InputError
from support.servers import free_port


@dataclasses.dataclass
class Case:
    name: str
    input: Any
    expected: Any = None


PARSE_CASES = [
    Case("empty", "", ()),
    Case("comma", "hellaswag,arc_easy", ("hellaswag", "arc_easy")),
    Case("spaces_and_duplicates", " hellaswag, arc_easy  hellaswag ", ("hellaswag", "arc_easy")),
    Case("list", ["arc_easy", " "], ("arc_easy",)),
]


@pytest.mark.parametrize("case", PARSE_CASES, ids=[case.name for case in PARSE_CASES])
def test_parse_tasks(case: Case) -> None:
    assert tasks.parse_tasks(case.input) == case.expected


def test_scores_keep_metrics_and_name_filters() -> None:
    output = {"results": {
        "arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1,
                     "acc_norm,none": 0.25, "sample_len": 10},
        "gsm8k": {"exact_match,strict-match": 0.125, "exact_match_stderr,strict-match": "N/A"},
    }}
    assert harness.scores(output) == {
        "arc_easy": {"acc": 0.5, "acc_norm": 0.25},
        "gsm8k": {"exact_match_strict-match": 0.125},
    }


class Sink:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.values[metric] = value


def test_publish_writes_base_tuned_and_delta_side_by_side(tmp_path: Path) -> None:
    base = {"arc_easy": {"acc": 0.5, "acc_norm": 0.25}}
    tuned = {"arc_easy": {"acc": 0.75, "acc_norm": 0.25}}
    result = {"config": harness.BenchmarkConfig(tasks=("arc_easy",), limit=4), "device": "cpu",
              "tuned_kind": "merged model", "rows": harness.comparison_rows(base, tuned)}
    sink = Sink()
    harness.publish(result, sink, str(tmp_path / "report.md"))
    assert sink.values == {
        "base/arc_easy/acc": 0.5, "tuned/arc_easy/acc": 0.75, "delta/arc_easy/acc": 0.25,
        "base/arc_easy/acc_norm": 0.25, "tuned/arc_easy/acc_norm": 0.25,
        "delta/arc_easy/acc_norm": 0.0,
    }
    report = (tmp_path / "report.md").read_text()
    assert "| arc_easy | acc | 0.5000 | 0.7500 | +0.2500 |" in report
    assert "at most 4 examples per task" in report


# --------------------------------------------------------------------------- checks


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sentiment_task(tmp_path_factory.mktemp("tasks"), count=6)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


Check = Callable[..., list[str]]


@pytest.fixture(scope="module")
def check(task_dir: Path) -> Check:
    """benchmark_problems with working settings, `overrides` changed."""

    def problems(**overrides: Any) -> list[str]:
        # One task source for all: the harness's registry is indexed once per include path.
        settings: dict[str, Any] = {"tasks": TASK_NAME, "num_fewshot": 0, "limit": 10,
                                    "batch_size": 4, "prefix": "benchmark_",
                                    "task_source": str(task_dir)}
        settings.update(overrides)
        return tasks.benchmark_problems(settings.pop("tasks"), **settings)

    return problems


SETTING_CASES = [
    Case("limit_zero", {"limit": 0}, "`benchmark_limit` must be an integer >= 1, got 0"),
    Case("limit_negative", {"limit": -5}, "`benchmark_limit` must be an integer >= 1, got -5"),
    Case("fewshot_negative", {"num_fewshot": -1},
         "`benchmark_num_fewshot` must be an integer >= 0, got -1"),
    Case("batch_zero", {"batch_size": 0}, "`benchmark_batch_size` must be an integer >= 1, got 0"),
    Case("classifier", {"model_task": "sequence-classification"},
         "`benchmark_tasks` needs a causal-lm run"),
    Case("missing_source", {"task_source": "/nonexistent/tasks"},
         "`benchmark_task_source` '/nonexistent/tasks': /nonexistent/tasks does not exist"),
]


@pytest.mark.parametrize("case", SETTING_CASES, ids=[case.name for case in SETTING_CASES])
def test_bad_settings_are_one_line_each(check: Check, case: Case, offline: None) -> None:
    problems = check(**case.input)
    assert len(problems) == 1 and problems[0].startswith(case.expected), problems


def test_no_tasks_checks_nothing(check: Check) -> None:
    assert tasks.benchmark_problems("", num_fewshot=-1, limit=0, batch_size=0) == []


def test_a_local_task_passes_offline(check: Check, task_dir: Path,
                                     offline: None) -> None:
    assert check() == []
    assert check(task_source=str(task_dir / f"{TASK_NAME}.yaml")) == []


def test_unknown_task_suggests_close_names(check: Check, offline: None) -> None:
    problems = check(tasks=f"hellaswg,{TASK_NAME[:-1]}")
    assert problems == [
        "`benchmark_tasks`: 'hellaswg' is no task of lm-evaluation-harness's registry or in "
        "`benchmark_task_source`; did you mean 'hellaswag', 'hellaswag_vi', 'hellaswag_uk'?",
        f"`benchmark_tasks`: {TASK_NAME[:-1]!r} is no task of lm-evaluation-harness's registry "
        f"or in `benchmark_task_source`; did you mean {TASK_NAME!r}, 'kobest_sentineg', "
        "'darija_sentiment'?",
    ]


def test_hub_task_is_refused_while_offline(check: Check, offline: None) -> None:
    problems = check(tasks="arc_easy,ai2_arc")
    assert problems == [
        "`benchmark_tasks`: 'arc_easy' reads the Hub dataset 'allenai/ai2_arc', and the Hugging "
        "Face Hub is unreachable here (HF_HUB_OFFLINE=1); give a local task through "
        "`benchmark_task_source`, or run where the Hub (or HF_ENDPOINT's mirror) is reachable",
        "`benchmark_tasks`: 'ai2_arc' reads Hub datasets (its task 'arc_challenge' reads "
        "'allenai/ai2_arc'), and the Hugging Face Hub is unreachable here (HF_HUB_OFFLINE=1); "
        "give a local task through `benchmark_task_source`, or run where the Hub (or "
        "HF_ENDPOINT's mirror) is reachable",
    ]
    # A run submitted elsewhere is not judged by this machine's Hub access.
    assert check(tasks="arc_easy", runs_here=False) == []


def test_hub_task_is_refused_when_the_endpoint_does_not_answer(
    check: Check, monkeypatch: pytest.MonkeyPatch, http_server: Any
) -> None:
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    port = free_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    problems = check(tasks="arc_easy")
    assert len(problems) == 1
    assert f"the Hugging Face Hub is unreachable here (127.0.0.1:{port} cannot be reached" in (
        problems[0])
    monkeypatch.setenv("HF_ENDPOINT", http_server.base_url)
    assert check(tasks="arc_easy") == []


def test_a_source_on_the_steps_disk_is_checked_only_where_the_step_runs(
    check: Check, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: None
) -> None:
    monkeypatch.setenv("KFTUNE_PVC_ROOT", str(tmp_path))
    # A run submitted to a cluster: the claim is mounted in the step's pod, not here.
    assert check(tasks="my_task", task_source="pvc://claim/tasks", runs_here=False) == []
    (problem,) = check(tasks="my_task", task_source="pvc://claim/tasks")
    assert problem.startswith("`benchmark_task_source` 'pvc://claim/tasks': ")
    assert "does not exist; is the claim mounted" in problem


def test_every_problem_at_once(check: Check, offline: None) -> None:
    problems = check(tasks="hellaswg,arc_easy", limit=0, num_fewshot=-2, batch_size=0)
    assert [problem.split("`")[1] for problem in problems] == [
        "benchmark_num_fewshot", "benchmark_limit", "benchmark_batch_size", "benchmark_tasks",
        "benchmark_tasks"]


def test_step_refuses_bad_input_before_loading_any_model(tmp_path: Path, task_dir: Path,
                                                          offline: None) -> None:
    # Manifests without weights: loading either model would fail with another error.
    for name, kind in (("base", "model"), ("adapter", "adapter")):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name, {"kind": kind, "task": "causal-lm"})
    with pytest.raises(InputError) as raised:
        harness.run_benchmark(base_model_dir=str(tmp_path / "base"),
                              tuned_model_dir=str(tmp_path / "adapter"),
                              tasks="hellaswg,arc_easy", limit=0, task_source=str(task_dir))
    assert [problem.split("`")[1] for problem in raised.value.problems] == [
        "limit", "tasks", "tasks"]


def test_step_refuses_a_classifier_and_wrong_artifacts(tmp_path: Path) -> None:
    for name, kind in (("base", "model"), ("adapter", "adapter"), ("data", "dataset")):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name, {"kind": kind, "task": "sequence-classification"})
    with pytest.raises(InputError, match="`tasks` needs a causal-lm run"):
        harness.run_benchmark(base_model_dir=str(tmp_path / "base"),
                              tuned_model_dir=str(tmp_path / "adapter"), tasks="arc_easy")
    with pytest.raises(InputError, match="`tuned_model` must be a kftune adapter or merged"):
        harness.run_benchmark(base_model_dir=str(tmp_path / "base"),
                              tuned_model_dir=str(tmp_path / "data"), tasks="arc_easy")


def test_the_whole_run_check_includes_the_benchmark(task_dir: Path, offline: None) -> None:
    from kftune.pipelines import parameters

    defaults = {name: default for name, (_, default) in parameters.pipeline_parameters().items()}
    arguments = {**defaults, "benchmark_tasks": f"{TASK_NAME},hellaswg",
                 "benchmark_limit": 0, "benchmark_task_source": str(task_dir)}
    problems = parameters.validate_arguments(arguments, on_this_host=True)
    # The demo run is a classifier, which the harness cannot score.
    assert [problem for problem in problems if "benchmark" in problem] == [
        "`benchmark_limit` must be an integer >= 1, got 0; the examples per task, e.g. 100",
        "`benchmark_tasks` needs a causal-lm run (the harness scores the text a language model "
        "writes or ranks), got task 'sequence-classification', whose model is a classifier; "
        "leave `benchmark_tasks` empty, or fine-tune with task causal-lm"]
    problems = parameters.validate_arguments({**arguments, "task": "causal-lm"},
                                             on_this_host=True)
    assert [problem.split(":")[0] for problem in problems if "benchmark" in problem] == [
        "`benchmark_limit` must be an integer >= 1, got 0; the examples per task, e.g. 100",
        "`benchmark_tasks`"]
