"""The secret scan: a credential anywhere in a run's parameters, found without echoing it.

Every string of a run's parameters is logged, stored by KFP as a run parameter, written into
`summary.json`, job manifests or pod arguments. A credential in any of them leaks, so every door
scans every string (nested dicts and lists included) before anything is fetched or created:

- a URI with credentials (user-info before '@', a signed or keyed query string):
  `uris.credential_problems`, for a URI-valued parameter and for a URI inside free text
  (`--api-key=... https://user:pw@host/`);
- a token of a well-known shape (Hugging Face `hf_...`, AWS access key ids, GitHub, Slack,
  OpenAI-style `sk-...`, Google API keys, JSON web tokens, PEM private keys);
- a non-empty value under a key that names a credential (`hub_token`, `password`, `api_key`).

Ordinary values do not match: the shapes are long and specific (`hf_` then 30+ letters and
digits), and names like `hf_token_secret` (a Secret's name) or `max_tokens_per_micro_batch` are
not credential keys. The problems name the parameter and where the credential sits, never its
value; `scrub` removes found values from any other message that quotes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import uris

# Well-known token shapes: (pattern, what it is). Each is long and specific enough that an
# ordinary value (a model name, a split, a path) does not match.
_TOKEN_SHAPES = (
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), "a Hugging Face token"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}\b"), "a GitHub token"),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{40,}\b"), "a GitHub token"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}"), "an API secret key (sk-...)"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), "a Google API key"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
     "a JSON web token"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
                r"|[\s\S]*)"), "a private key"),  # the whole block, to its end or the text's
)
# Keys whose (non-empty string) value is a credential wherever they appear.
CREDENTIAL_KEYS = frozenset({
    "hub_token", "access_token", "token", "password", "passwd", "secret", "secret_key",
    "api_key", "apikey", "access_key", "client_secret", "private_key", "auth_token",
    "aws_secret_access_key", "aws_access_key_id", "aws_session_token", "hf_token",
})
# Mappings whose keys are environment variable names: `secret_env` values are Secret references
# (`name:key`), and `env` names are checked by the train step's own rule (`spec.check_plain_env`).
_NAME_MAPS = ("secret_env", "env")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>,;]+")
_HOW = ("put it in a Kubernetes Secret (the pipeline's `hf_token_secret`/`s3_secret`, or "
        "`kubernetes_options.secret_env`) or the environment, never in a parameter")


def _where(path: str) -> str:
    return f"`{path}`"


def string_problems(text: str, parameter: str) -> tuple[list[str], list[str]]:
    """(problems, secret substrings found) of one string of `parameter`."""
    problems: list[str] = []
    found: list[str] = []
    stripped = text.strip()
    if uris.credential_problems(stripped, parameter=parameter):
        # A URI-valued parameter: the URI check's own message (it says how for its scheme).
        problems += uris.credential_problems(stripped, parameter=parameter)
        found.append(stripped)
    else:
        for match in _URI_IN_TEXT.finditer(text):
            uri = match.group(0)
            if uris.credential_problems(uri, parameter=parameter):
                found.append(uri)
                problems.append(
                    f"{_where(parameter)} holds a URI with credentials ({uris.display_uri(uri)!r}; "
                    "the credentials are not shown); parameters are logged and stored with the "
                    f"run: remove them and {_HOW}")
    for pattern, what in () if problems else _TOKEN_SHAPES:  # one problem per string
        for match in pattern.finditer(text):
            found.append(match.group(0))
            problems.append(
                f"{_where(parameter)} holds {what} (not shown); parameters are logged and stored "
                f"with the run: remove it and {_HOW}")
            break
    return problems, found


def scan(value: Any, parameter: str) -> tuple[list[str], list[str]]:
    """(problems, secret values found) of every string in `value`, nested dicts and lists too.

    Args:
        value: a parameter's value: a string, a dict (keys and values), a list, tuple or set;
            anything else holds no string and has no problem.
        parameter: its name, for the messages; nested entries are `parameter.key` and
            `parameter[index]`.
    """
    problems: list[str] = []
    found: list[str] = []
    if isinstance(value, str):
        return string_problems(value, parameter)
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{parameter}.{key}"
            if (isinstance(key, str) and key.lower() in CREDENTIAL_KEYS
                    and not parameter.endswith(_NAME_MAPS)
                    and isinstance(item, str) and item.strip()):
                found.append(item)
                problems.append(
                    f"{_where(path)} is a credential, which would be stored with the run for "
                    f"anyone who can read it (the value is not shown); remove it and {_HOW}")
                continue
            more, secrets = scan(key, f"{parameter} key") if isinstance(key, str) else ([], [])
            problems += more
            found += secrets
            more, secrets = scan(item, path)
            problems += more
            found += secrets
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            more, secrets = scan(item, f"{parameter}[{index}]")
            problems += more
            found += secrets
    return problems, found


def scan_all(values: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """`scan` of every parameter of `values` (name -> value)."""
    problems: list[str] = []
    found: list[str] = []
    for name, value in values.items():
        more, secrets = scan(value, name)
        problems += more
        found += secrets
    return problems, found


def field_problems(config: Any, names: Mapping[str, str] | None = None,
                   skip: tuple[str, ...] = ()) -> list[str]:
    """`scan` of every field of a step's config dataclass: the step's own secret scan.

    Args:
        config: the dataclass.
        names: field -> the parameter name the step's users know it by (default the field's).
        skip: fields the step checks for credentials itself (with its own fix).
    """
    import dataclasses

    problems: list[str] = []
    for field in dataclasses.fields(config):
        if field.name in skip:
            continue
        parameter = (names or {}).get(field.name, field.name)
        problems += scan(getattr(config, field.name), parameter)[0]
    return problems


def redact_text(text: str) -> str:
    """`text` with every token of a well-known shape and every URI credential replaced by `***`."""
    for pattern, _ in _TOKEN_SHAPES:
        text = pattern.sub("***", text)
    return uris.redact(text)


def scrub(messages: Iterable[str], secrets: Iterable[str]) -> list[str]:
    """`messages` with every found secret (and any URI credential) replaced by `***`."""
    ordered = sorted({secret for secret in secrets if len(secret) >= 4}, key=len, reverse=True)
    cleaned = []
    for message in messages:
        for secret in ordered:
            message = message.replace(secret, "***").replace(repr(secret)[1:-1], "***")
        cleaned.append(redact_text(message))
    return cleaned
