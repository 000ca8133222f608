"""Credentials written into URIs are refused at every first boundary and never echoed.

The policy (`uris.credential_problems`): a URI never carries a credential. Each case below is a
URI holding one; it goes through every surface a user's URI reaches (the download components'
inputs, `kftune run`'s flags and its log, `kftune launch --dry-run`, `kftune submit --host`) and
the secret text must appear in none of them, raw or percent-decoded, while the message says where
the credential sits and how to pass it instead.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kftune.components.common import uris
from kftune.components.common.errors import InputError
from kftune.components.download_dataset.dataset import DatasetSource
from kftune.components.download_model.model import ModelSource
from kftune.pipelines import cli
from support.kfp_server import KfpApiDouble


@dataclass
class Case:
    name: str
    uri: str
    secrets: list[str]
    expected: list[str] = field(default_factory=list)


SIGV4 = (
    "https://corpus.s3.amazonaws.com/train.jsonl?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261202%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20261202T040000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=9f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100"
)
CASES = [
    Case("s3 key and secret", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIK7MDENGbPxRfiCY@corpus/a.jsonl",
         ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMIK7MDENGbPxRfiCY"],
         ["'s3://corpus/a.jsonl' carries credentials", "before '@'", "AWS_SECRET_ACCESS_KEY",
          "`s3_secret`"]),
    Case("s3 key only", "s3://AKIAIOSFODNN7EXAMPLE@corpus/a.jsonl", ["AKIAIOSFODNN7EXAMPLE"],
         ["'s3://corpus/a.jsonl' carries credentials"]),
    Case("gs user and password", "gs://svc:gsPassw0rdValue@corpus/a.jsonl", ["gsPassw0rdValue"],
         ["'gs://corpus/a.jsonl' carries credentials", "GOOGLE_APPLICATION_CREDENTIALS"]),
    Case("https basic auth", "https://alice:hunter2hunter2@data.example.com/train.jsonl",
         ["hunter2hunter2"], ["'https://data.example.com/train.jsonl' carries credentials"]),
    Case("https token as user", "https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@example.com/x.csv",
         ["ghp_16C7e42F292c6912E7710c838347Ae178B4a"], ["before '@'"]),
    Case("S3 presigned (SigV4)", SIGV4,
         ["9f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100",
          "AKIAIOSFODNN7EXAMPLE"],
         ["'https://corpus.s3.amazonaws.com/train.jsonl?<redacted>'",
          "query string: X-Amz-Credential, X-Amz-Signature"]),
    Case("GCS signed URL",
         "https://storage.googleapis.com/corpus/a.jsonl?X-Goog-Algorithm=GOOG4-RSA-SHA256"
         "&X-Goog-Credential=sa%40proj.iam.gserviceaccount.com&X-Goog-Signature=0badc0ffee0ddba11",
         ["0badc0ffee0ddba11", "sa@proj.iam.gserviceaccount.com"], ["X-Goog-Signature"]),
    Case("Azure SAS", "https://acct.blob.core.windows.net/c/a.jsonl?sv=2022-11-02&sp=r"
         "&sig=AzUr3SigValue%2Bx%3D", ["AzUr3SigValue+x=", "AzUr3SigValue%2Bx%3D"], ["sig"]),
    Case("presigned s3:// query", "s3://corpus/a.jsonl?X-Amz-Signature=c0ffee00c0ffee00",
         ["c0ffee00c0ffee00"], ["X-Amz-Signature"]),
    Case("Hub token", "hf://hf_AbCdEfGhIjKlMnOpQrStUv@acme/reviews", ["hf_AbCdEfGhIjKlMnOpQrStUv"],
         ["'hf://acme/reviews' carries credentials", "HF_TOKEN", "`hf_token_secret`"]),
    Case("Hub user and token", "hf://user:hf_ZyXwVuTsRqPoNmLk@acme/reviews",
         ["hf_ZyXwVuTsRqPoNmLk"], ["HF_TOKEN"]),
]
IDS = [case.name for case in CASES]


def assert_no_secret(text: str, case: Case) -> None:
    for secret in case.secrets:
        assert secret not in text, f"{secret!r} leaked"
        assert urllib.parse.unquote(secret) not in text, f"{secret!r} leaked (decoded)"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_policy_names_where_the_credential_is_and_how_to_pass_it(case: Case) -> None:
    (message,) = uris.credential_problems(case.uri, parameter="dataset_uri")
    assert message.startswith("`dataset_uri` ")
    for text in case.expected:
        assert text in message
    assert_no_secret(message, case)
    assert_no_secret(uris.display_uri(case.uri), case)
    assert_no_secret(uris.redact(f"failed to read {case.uri}: boom"), case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_download_components_refuse_before_touching_the_network(case: Case) -> None:
    for build in (lambda: DatasetSource(uri=case.uri), lambda: ModelSource(uri=case.uri)):
        with pytest.raises(InputError) as caught:
            build()
        assert "carries credentials" in str(caught.value)
        assert_no_secret(str(caught.value), case)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_kftune_run_refuses_before_any_step_and_logs_no_secret(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    output_dir = tmp_path / "run"
    code = cli.main(["run", "--output-dir", str(output_dir), "--dataset-uri", case.uri,
                     "--param", f"model_uri={case.uri}"])
    captured = capsys.readouterr()
    assert code == 2
    assert "2 problems" in captured.err
    assert "`dataset_uri`" in captured.err and "`model_uri`" in captured.err
    for surface in (captured.err, captured.out, caplog.text):
        assert_no_secret(surface, case)
    assert not output_dir.exists()  # no summary.json, no artifacts, no workspace


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_launch_dry_run_prints_no_manifest_and_no_secret(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["launch", "--dry-run", "--image", "registry.example.com/trainer:1",
                     "--model-uri", "s3://models/base", "--dataset-uri", case.uri,
                     "--output-uri", "s3://adapters/run-1"])
    captured = capsys.readouterr()
    assert code == 2
    assert "`--dataset-uri`" in captured.err and "carries credentials" in captured.err
    assert captured.out == ""  # no PyTorchJob: no args, no kftune.dev/output-uri annotation
    assert_no_secret(captured.err, case)


NOT_CREDENTIALS = [
    "hf://gpt2@main",  # a revision
    "hf://acme/reviews@refs/pr/1",
    "https://example.com/data/train.jsonl?download=true",
    "s3://corpus/a.jsonl",
    "/data/user@host/train.jsonl",
    "file:///data/a@b.jsonl",
]


@pytest.mark.parametrize("uri", NOT_CREDENTIALS)
def test_uris_without_credentials_pass(uri: str) -> None:
    assert uris.credential_problems(uri) == []


@pytest.mark.parametrize("userinfo", ["alice:hunter2hunter2", "hunter2hunter2"])
def test_submit_host_password_is_refused_and_never_printed(
    userinfo: str, kfp_api: KfpApiDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    host = kfp_api.host.replace("://", f"://{userinfo}@")
    code = cli.main(["submit", "--host", host])
    captured = capsys.readouterr()
    assert code == 2
    assert f"`host` '{kfp_api.host}' carries credentials" in captured.err
    assert "hunter2hunter2" not in captured.err + captured.out
    assert kfp_api.requests == []  # refused before the server was contacted
