"""The one backoff policy of kftune's retries and waits (`common.retry.Backoff`)."""

from typing import NamedTuple

import pytest
from kftune.components.common.retry import Backoff


class Case(NamedTuple):
    name: str
    first: float
    maximum: float
    expected: list[float]


SEQUENCES = [
    Case("doubles from one second", 1.0, 30.0, [1, 2, 4, 8, 16, 30, 30]),
    Case("capped at a maximum below the first", 5.0, 2.0, [2, 2, 2]),
    Case("maximum reached exactly", 0.05, 0.2, [0.05, 0.1, 0.2, 0.2]),
    # A zero first delay retries at once, then grows from the floor like any other ladder (it
    # used to jump from 0 straight to the maximum: 0, 30, 30, ...).
    Case("zero first delay grows from the floor", 0.0, 30.0, [0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2]),
    Case("zero first delay, maximum under the floor", 0.0, 0.05, [0, 0.05, 0.05]),
    Case("zero first delay reaches the maximum", 0.0, 0.3, [0, 0.1, 0.2, 0.3, 0.3]),
    Case("all zero: never waits", 0.0, 0.0, [0, 0, 0]),
]


@pytest.mark.parametrize("case", SEQUENCES, ids=[case.name for case in SEQUENCES])
def test_delays_grow_exponentially_up_to_the_maximum(case):
    backoff = Backoff(case.first, case.maximum)

    assert [backoff.next() for _ in case.expected] == pytest.approx(case.expected)


@pytest.mark.parametrize("case", SEQUENCES, ids=[case.name for case in SEQUENCES])
def test_reset_starts_the_sequence_again(case):
    backoff = Backoff(case.first, case.maximum)
    for _ in range(5):
        backoff.next()

    backoff.reset()

    assert [backoff.next() for _ in case.expected] == pytest.approx(case.expected)


def test_sleep_waits_at_most_the_limit_and_still_advances():
    backoff = Backoff(0.02, 1.0)

    assert backoff.sleep(limit=0.0) == 0.0
    assert backoff.sleep() == pytest.approx(0.04)


@pytest.mark.parametrize(("first", "maximum", "message"), [
    (-1.0, 30.0, "`first` must be >= 0 seconds, got -1.0"),
    (1.0, -2.0, "`maximum` must be >= 0 seconds, got -2.0"),
])
def test_negative_delays_are_refused(first, maximum, message):
    with pytest.raises(ValueError, match=message):
        Backoff(first, maximum)


POLICIES = [
    ("defaults", {}, dict(attempts=4, first_delay=1.0, api_attempts=6, timeout_seconds=60.0)),
    ("KFTUNE_RETRIES also bounds the Kubernetes API calls", {"KFTUNE_RETRIES": "2"},
     dict(attempts=2, api_attempts=2)),
    ("a zero first delay", {"KFTUNE_RETRY_DELAY_SECONDS": "0"}, dict(first_delay=0.0)),
    ("a request timeout", {"KFTUNE_TIMEOUT_SECONDS": "5"}, dict(timeout_seconds=5.0)),
]


@pytest.mark.parametrize("name, env, expected", POLICIES, ids=[case[0] for case in POLICIES])
def test_the_policy_reads_the_environments_knobs(name, env, expected, monkeypatch):
    from kftune.components.common import retry

    for knob in (retry.RETRIES_ENV, retry.RETRY_DELAY_ENV, retry.TIMEOUT_ENV):
        monkeypatch.delenv(knob, raising=False)
    for knob, value in env.items():
        monkeypatch.setenv(knob, value)

    policy = retry.policy()

    assert {field: getattr(policy, field) for field in expected} == expected


def test_every_retried_thing_takes_its_numbers_from_the_policy():
    from kftune.components.common.retry import DEFAULTS
    from kftune.components.train_lora.step.backends.local_training import LocalTraining
    from kftune.components.train_lora.step.options import ElasticPolicy
    from kftune.pipelines.lora_finetune import lora_finetune_pipeline

    tasks = lora_finetune_pipeline.pipeline_spec.root.dag.tasks
    download = tasks["download-dataset"].retry_policy

    assert LocalTraining()._restarts == DEFAULTS.local_restarts
    assert ElasticPolicy(min_nodes=1, max_nodes=2).max_restarts == DEFAULTS.elastic_restarts
    assert (download.max_retry_count, download.backoff_factor) == (
        DEFAULTS.task_retries, DEFAULTS.task_backoff_factor)
    assert download.backoff_duration.seconds == DEFAULTS.task_backoff_seconds
    assert download.backoff_max_duration.seconds == DEFAULTS.task_backoff_max_seconds
