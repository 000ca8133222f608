"""Where data and models come from: URI parsing and fetching to local disk.

Supported forms (what the download components accept as `uri`):

- `hf://org/name[@revision]`: a Hugging Face Hub repository (token from `HF_TOKEN` only).
- `s3://bucket/key`: any S3-compatible store. Endpoint from `AWS_ENDPOINT_URL_S3`,
  `AWS_ENDPOINT_URL` or `S3_ENDPOINT_URL` (MinIO: path-style addressing is used with a custom
  endpoint), region from `AWS_REGION`/`AWS_DEFAULT_REGION`, credentials from the usual
  `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` (a Kubernetes Secret as env).
- `gs://bucket/key`: Google Cloud Storage through gcsfs (application default credentials;
  `STORAGE_EMULATOR_HOST` points it at a GCS-compatible server, as the tests do).
- `https://...`, `http://...`: one file.
- `file:///abs/path` or a plain path.
- `pvc://claim/path`: a path on a PersistentVolumeClaim mounted at `$KFTUNE_PVC_ROOT/<claim>`
  (default `/mnt/pvc/<claim>`).
- `pkg://module/path`: a file or directory shipped inside an installed Python package, found
  through importlib without importing the package.

Transfers go through fsspec (s3fs, gcsfs, HTTP) and huggingface_hub; this module only maps URIs to
them, retries transient failures (`retry.py`) and turns failures into messages that name the
parameter, the value and the fix, without secrets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import posixpath
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import retry
from .errors import OUTPUT_DISK_FIX, DiskFullError, InputError, is_disk_full

logger = logging.getLogger(__name__)

PVC_ROOT_ENV = "KFTUNE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
SCHEMES = ("hf", "s3", "gs", "https", "http", "file", "pvc", "pkg")
REMOTE_SCHEMES = ("s3", "gs", "https", "http")
LOCAL_SCHEMES = ("file", "pvc", "pkg")
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
)
_FORMS = (
    "hf://org/name[@revision], s3://bucket/key, gs://bucket/key, https://host/path, "
    "file:///path or a plain path, pvc://claim/path, pkg://module/path"
)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_HF_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DNS1123_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


_SCHEME_PREFIX_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_USERINFO_IN_TEXT_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/@\s]+)@")
# Query parameters that carry a credential: S3 SigV4 and SigV2 presigned URLs, GCS signed URLs,
# Azure SAS, CloudFront signed URLs, and the usual token/key spellings.
_SECRET_QUERY_KEYS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
        "signature",
        "x-goog-signature",
        "x-goog-credential",
        "googleaccessid",
        "sig",
        "key-pair-id",
        "policy",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "secret",
        "client_secret",
    }
)
_SECRET_QUERY_IN_TEXT_RE = re.compile(
    r"([?&](?:" + "|".join(map(re.escape, sorted(_SECRET_QUERY_KEYS))) + r")=)[^&\s#'\"]*",
    re.IGNORECASE,
)
_QUERY_SCHEMES = ("http", "https", "s3", "gs")
_CREDENTIALS_HOW = {
    "s3": "give the keys as the environment variables AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY (in the pipeline: the Kubernetes Secret named by `s3_secret`)",
    "gs": "authenticate with GOOGLE_APPLICATION_CREDENTIALS (a service-account key file; in the "
    "pipeline mounted from a Kubernetes Secret)",
    "hf": "set HF_TOKEN instead (in the pipeline: the Kubernetes Secret named by "
    "`hf_token_secret`, key `token`)",
    "http": "put the file where credentials come from a Secret (s3:// with the keys in the "
    "Kubernetes Secret named by `s3_secret`, or gs://), or serve it without credentials",
}
_CREDENTIALS_HOW["https"] = _CREDENTIALS_HOW["http"]


def _split_authority(rest: str) -> tuple[str, str]:
    """(authority, the rest from the first '/', '?' or '#') of what follows `scheme://`."""
    end = min((index for index in map(rest.find, "/?#") if index >= 0), default=len(rest))
    return rest[:end], rest[end:]


def _is_userinfo(scheme: str, userinfo: str) -> bool:
    """Whether the text before '@' in an authority is user-info (hf://gpt2@main is a revision)."""
    if scheme.lower() != "hf":
        return True
    return ":" in userinfo or userinfo.startswith("hf_")


def redact(text: str) -> str:
    """Removes secret values (from the known secret env vars) and URL user-info from `text`."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")

    def strip(match: re.Match[str]) -> str:
        scheme = match.group(1)[:-3]
        return match.group(1) + "***@" if _is_userinfo(scheme, match.group(2)) else match.group(0)

    text = _USERINFO_IN_TEXT_RE.sub(strip, text)
    return _SECRET_QUERY_IN_TEXT_RE.sub(r"\1***", text)


def display_uri(uri: str) -> str:
    """The URI as it may appear in logs, messages and manifests: no user-info, no query string.

    Everything else is the user's text as given (`s3:///key` stays `s3:///key`), so messages
    quote what the user wrote.
    """
    match = _SCHEME_PREFIX_RE.match(uri)
    if match is not None:
        scheme = match.group(1).lower()
        authority, tail = _split_authority(uri[match.end() :])
        userinfo, at, host = authority.rpartition("@")
        if at and _is_userinfo(scheme, userinfo):
            authority = host
        if scheme in _QUERY_SCHEMES and "?" in tail:
            path, _, query = tail.partition("?")
            query, hash_, fragment = query.partition("#")
            tail = path + ("?<redacted>" if query else "?") + hash_ + fragment
        uri = match.group(0) + authority + tail
    return redact(uri)


def credential_problems(uri: Any, *, parameter: str = "uri", how: str = "") -> list[str]:
    """Credentials written into `uri` (user-info, a signed query string): one problem, or none.

    kftune's policy: a URI never carries a credential. URIs are logged, stored with the run (KFP
    keeps every run parameter and shows it in its UI), written into manifests and pod arguments,
    so no stripping afterwards could keep a password or a signature out of all of them. They are
    refused at the first boundary, with a message that names where the credential sits (never its
    value) and how to pass it instead.

    Args:
        uri: the URI as the user gave it.
        parameter: its parameter's name, for the message.
        how: how credentials reach the reader of this URI instead (default: how kftune's own
            steps get them for its scheme).

    Returns:
        A list holding one message when `uri` carries credentials, else an empty list.
    """
    if not isinstance(uri, str):
        return []
    match = _SCHEME_PREFIX_RE.match(uri.strip())
    if match is None:
        return []
    scheme = match.group(1).lower()
    authority, tail = _split_authority(uri.strip()[match.end() :])
    found = []
    userinfo, at, _ = authority.rpartition("@")
    if at and _is_userinfo(scheme, userinfo):
        found.append("a user name or password before '@'")
    if scheme in _QUERY_SCHEMES and "?" in tail:
        query = tail.partition("?")[2].partition("#")[0]
        keys = sorted(
            {key for key, _ in parse_qsl(query, keep_blank_values=True)
             if key.lower() in _SECRET_QUERY_KEYS}
        )
        if keys:
            found.append(f"a signed or keyed query string: {', '.join(keys)}")
    if not found:
        return []
    how = how or _CREDENTIALS_HOW.get(scheme,
                                      "pass credentials through the environment, not the URI")
    return [
        f"`{parameter}` {display_uri(uri.strip())!r} carries credentials in the URI "
        f"({' and '.join(found)}); URIs are logged and stored with the run, so kftune refuses "
        f"them: remove them and {how}"
    ]


@dataclass(frozen=True)
class Location:
    """A parsed URI."""

    uri: str
    """The URI as given (may hold user-info; use `display` in messages)."""
    scheme: str
    """One of `SCHEMES`; plain paths are `file`."""
    authority: str
    """Bucket (s3/gs), repository id (hf), host[:port] (http/s), claim (pvc), module (pkg)."""
    path: str
    """Key or path inside `authority`, without a leading slash (for `file`: the absolute path)."""
    revision: str = ""
    """The `@revision` of an `hf://` URI, empty otherwise."""

    @property
    def display(self) -> str:
        """The URI without secrets, for messages and manifests."""
        return display_uri(self.uri)

    @property
    def is_local(self) -> bool:
        """Whether the data is on a local (or mounted) filesystem."""
        return self.scheme in LOCAL_SCHEMES

    @property
    def fsspec_url(self) -> str:
        """The URL fsspec understands (remote schemes only)."""
        if self.scheme in ("s3", "gs"):
            return f"{self.scheme}://{self.authority}/{self.path}".rstrip("/")
        return self.uri


def parse_problems(uri: str, *, parameter: str = "uri") -> tuple[Location | None, list[str]]:
    """Parses `uri` without touching the network or disk.

    Returns:
        The location (None when malformed) and the problems found (empty when well formed).
    """
    if not isinstance(uri, str) or not uri.strip():
        return None, [f"`{parameter}` must be a URI or path, got {uri!r}; use one of {_FORMS}"]
    uri = uri.strip()
    credentials = credential_problems(uri, parameter=parameter)
    if credentials:
        # The other checks quote parts of the URI (a "bucket name" holding the key): they see it
        # without the credentials, and every problem is still reported at once.
        return None, credentials + parse_problems(display_uri(uri), parameter=parameter)[1]
    shown = display_uri(uri)
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", uri)
    if match is None:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
            scheme = uri.split(":", 1)[0]
            return None, [
                f"`{parameter}` {shown!r} is malformed: {scheme}: must be followed by '//'; "
                f"use one of {_FORMS}"
            ]
        return Location(uri, "file", "", str(Path(uri).expanduser().absolute())), []
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme not in SCHEMES:
        return None, [
            f"`{parameter}` has an unknown scheme {scheme + '://'!r} in {shown!r}; use one of "
            f"{_FORMS}"
        ]
    parser = _PARSERS[scheme]
    return parser(uri, scheme, rest, shown, parameter)


def revision_problems(location: Location | None, revision: Any) -> list[str]:
    """The problems with a `revision` given beside a parsed `uri` (a Hub revision, hf:// only)."""
    if not isinstance(revision, str):
        return [f"`revision` must be a string, got {revision!r}"]
    if location is None or not revision:
        return []
    if location.scheme != "hf":
        return [
            f"`revision` applies to hf:// URIs only, got {revision!r} for `uri` "
            f"{location.display!r}; leave it empty"
        ]
    if location.revision and location.revision != revision:
        return [
            f"`revision` {revision!r} contradicts the @{location.revision} in `uri` "
            f"{location.display!r}; give the revision in one place"
        ]
    return []


def hub_revision(uri: str, revision: str) -> str:
    """The Hub revision asked for: `revision`, else the @revision in `uri` (empty for neither)."""
    return revision or parse_uri(uri).revision


def parse_uri(uri: str, *, parameter: str = "uri") -> Location:
    """Parses `uri` (see the module docstring for the forms).

    Raises:
        InputError: when the URI is malformed or has an unknown scheme.
    """
    location, problems = parse_problems(uri, parameter=parameter)
    if problems:
        raise InputError(problems)
    assert location is not None
    return location


def _parse_bucket(uri, scheme, rest, shown, parameter):
    bucket, _, key = rest.partition("/")
    if not bucket:
        return None, [
            f"`{parameter}` {shown!r} is malformed: no bucket; write {scheme}://<bucket>/<key>"
        ]
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        return None, [
            f"`{parameter}` {shown!r} has an invalid bucket name {bucket!r}: 3-63 characters of "
            f"lowercase letters, digits, '.', '-', '_'; write {scheme}://<bucket>/<key>"
        ]
    return Location(uri, scheme, bucket, key.strip("/")), []


def _parse_hf(uri, scheme, rest, shown, parameter):
    repo, _, revision = rest.partition("@")
    parts = repo.strip("/").split("/")
    bad_parts = [part for part in parts if not _HF_NAME_RE.match(part) or ".." in part]
    if not repo.strip("/") or len(parts) > 2 or bad_parts or ("@" in rest and not revision):
        return None, [
            f"`{parameter}` {shown!r} is malformed: write hf://<org>/<name> or "
            f"hf://<org>/<name>@<revision> (letters, digits, '-', '_', '.')"
        ]
    return Location(uri, scheme, "/".join(parts), "", revision), []


def _parse_http(uri, scheme, rest, shown, parameter):
    parts = urlsplit(uri)
    if not parts.hostname:
        return None, [f"`{parameter}` {shown!r} is malformed: no host; write {scheme}://host/path"]
    if not parts.path.strip("/"):
        return None, [
            f"`{parameter}` {shown!r} names no file: write {scheme}://host/path/to/file.jsonl"
        ]
    return Location(uri, scheme, parts.netloc, parts.path.lstrip("/")), []


def _parse_file(uri, scheme, rest, shown, parameter):
    if not rest:
        return None, [f"`{parameter}` {shown!r} is malformed: no path; write file:///abs/path"]
    if not rest.startswith("/"):
        host, _, path = rest.partition("/")
        if host not in ("", "localhost"):
            return None, [
                f"`{parameter}` {shown!r} is malformed: file URIs take an absolute path, "
                f"write file:///{rest} (three slashes)"
            ]
        rest = "/" + path
    return Location(uri, scheme, "", rest), []


def _inside(relative: str) -> bool:
    """Whether a relative POSIX path stays inside its root (no `..` escape, not absolute)."""
    if relative.startswith("/") or relative.startswith("\\"):
        return False
    return ".." not in relative.replace("\\", "/").split("/")


def _parse_pvc(uri, scheme, rest, shown, parameter):
    claim, _, path = rest.partition("/")
    if not claim or not _DNS1123_RE.match(claim) or len(claim) > 253:
        return None, [
            f"`{parameter}` {shown!r} has an invalid claim name {claim!r}: lowercase letters, "
            f"digits and '-' (a Kubernetes name); write pvc://<claim>/<path>"
        ]
    if not _inside(path):
        return None, [
            f"`{parameter}` {shown!r}: the path {path!r} leaves the claim (a '..' segment); "
            f"write a path inside the volume"
        ]
    return Location(uri, scheme, claim, path.strip("/")), []


def _parse_pkg(uri, scheme, rest, shown, parameter):
    module, _, path = rest.partition("/")
    if not _MODULE_RE.match(module):
        return None, [
            f"`{parameter}` {shown!r} has an invalid module name {module!r}; write "
            f"pkg://<importable_module>/<path inside it>"
        ]
    if not _inside(path):
        return None, [
            f"`{parameter}` {shown!r}: the path {path!r} leaves the package (a '..' segment); "
            f"write a path inside the package"
        ]
    return Location(uri, scheme, module, path.strip("/")), []


_PARSERS: dict[str, Callable[..., tuple[Location | None, list[str]]]] = {
    "s3": _parse_bucket,
    "gs": _parse_bucket,
    "hf": _parse_hf,
    "http": _parse_http,
    "https": _parse_http,
    "file": _parse_file,
    "pvc": _parse_pvc,
    "pkg": _parse_pkg,
}


def pvc_root() -> Path:
    """Where PersistentVolumeClaims are mounted (`KFTUNE_PVC_ROOT`, default /mnt/pvc)."""
    return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def package_directory(module: str, *, parameter: str = "uri", uri: str = "") -> Path:
    """The directory of an installed package, found without importing (executing) it.

    Raises:
        InputError: when the package is not installed.
    """
    top, *inner = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            [
                f"`{parameter}` {display_uri(uri or 'pkg://' + module)!r} names the package "
                f"{top!r}, which is not installed (or is a module, not a package); "
                f"`pip install` the distribution that provides it"
            ]
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*inner)


def local_path(location: Location, *, parameter: str = "uri") -> Path:
    """The local filesystem path of a `file`, `pvc` or `pkg` location (not checked to exist)."""
    if location.scheme == "file":
        return Path(location.path)
    if location.scheme == "pvc":
        return pvc_root() / location.authority / location.path
    if location.scheme == "pkg":
        return package_directory(location.authority, parameter=parameter, uri=location.uri) / (
            location.path
        )
    raise ValueError(f"{location.scheme}:// is not a local location")


def missing_problems(location: Location | None, *, parameter: str = "uri") -> list[str]:
    """A local location (file/pvc/pkg) whose path does not exist on this machine: one problem.

    Remote locations, and None (a URI that did not parse), have none.
    """
    if location is None or not location.is_local:
        return []
    try:
        path = local_path(location, parameter=parameter)
    except InputError as error:
        return list(error.problems)
    if path.exists():
        return []
    origin = "" if location.scheme == "file" else f" (resolved from {location.display})"
    hint = {
        "pvc": f"; is the claim mounted at {pvc_root() / location.authority} "
        f"(set {PVC_ROOT_ENV} for another root)?",
        "pkg": "; check the path inside the package",
    }.get(location.scheme, "; check the path")
    return [f"`{parameter}` {location.display!r}: {path}{origin} does not exist{hint}"]


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment, or None for AWS itself."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def storage_options(scheme: str) -> dict[str, Any]:
    """Fsspec options for `scheme`: endpoint, region, timeouts; credentials stay with the SDKs.

    botocore reads `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from the environment itself, so
    secrets never pass through kftune code.
    """
    timeout = retry.timeout_seconds()
    if scheme == "s3":
        client_kwargs: dict[str, Any] = {}
        config_kwargs: dict[str, Any] = {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            # kftune retries (bounded, logged); botocore's own retries would multiply them.
            "retries": {"max_attempts": 1, "mode": "standard"},
        }
        endpoint = s3_endpoint()
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
            # MinIO and most S3-compatible servers need path-style addressing.
            config_kwargs["s3"] = {"addressing_style": "path"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client_kwargs["region_name"] = region
        return {
            "client_kwargs": client_kwargs,
            "config_kwargs": config_kwargs,
            "skip_instance_cache": True,
        }
    if scheme == "gs":
        return {"requests_timeout": timeout, "skip_instance_cache": True}
    if scheme in ("http", "https"):
        import aiohttp

        return {
            "client_kwargs": {
                "timeout": aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
            },
            "skip_instance_cache": True,
        }
    return {}


_FILESYSTEMS: dict[tuple[str, str, str], Any] = {}


def _credentials_fingerprint() -> str:
    """A digest of the credential env vars: a new filesystem when they change, no secret kept."""
    digest = hashlib.sha256()
    for name in SECRET_ENV_VARS + ("AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS",
                                   "STORAGE_EMULATOR_HOST"):
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return digest.hexdigest()


def filesystem(location: Location) -> Any:
    """An fsspec filesystem for a remote location (reused while endpoint and credentials hold)."""
    import fsspec

    options = storage_options(location.scheme)
    cache_key = (location.scheme, repr(sorted(options.items())), _credentials_fingerprint())
    fs = _FILESYSTEMS.get(cache_key)
    if fs is None:
        fs = fsspec.filesystem(location.scheme, **options)
        if location.scheme == "s3":
            # kftune retries (bounded, logged); s3fs's own retry loop would multiply them.
            fs.retries = 1
        _FILESYSTEMS[cache_key] = fs
    return fs


def _endpoint_hint(location: Location) -> str:
    if location.scheme == "s3":
        endpoint = s3_endpoint()
        return f" at endpoint {display_uri(endpoint)}" if endpoint else " on AWS S3"
    return ""


def describe_failure(
    error: BaseException, location: Location, *, parameter: str = "uri"
) -> BaseException:
    """Turns a transfer failure into an error whose message names parameter, value and fix.

    Returns:
        InputError for a missing object/bucket/repository or refused credentials, TimeoutError for
        a timeout, ConnectionError for an unreachable endpoint, DiskFullError when the local disk
        filled, else a RuntimeError. Messages hold no secrets.
    """
    shown = location.display
    where = _endpoint_hint(location)
    codes = _error_codes(error)
    if retry.is_timeout(error):
        return TimeoutError(
            f"`{parameter}` {shown!r}: the request timed out{where} after {retry.attempts()} "
            f"attempt(s) of {retry.timeout_seconds():g} s; check that the endpoint is reachable, "
            f"or raise {retry.TIMEOUT_ENV} / {retry.RETRIES_ENV}"
        )
    if retry.is_connection_failure(error):
        # Before "not found": a client may wrap a refused connection in FileNotFoundError.
        return ConnectionError(
            f"`{parameter}` {shown!r}: could not reach the server{where} after "
            f"{retry.attempts()} attempt(s) ({_connection_reason(error)}); check the host, port "
            f"and network, or raise {retry.RETRIES_ENV}"
        )
    if isinstance(error, PermissionError) or codes & _AUTH_CODES:
        return InputError([
            f"`{parameter}` {shown!r}: access denied{where}; {_access_fix(location.scheme)}"
        ])
    if isinstance(error, FileNotFoundError) or codes & {"NoSuchKey", "NoSuchBucket", "404"}:
        if "NoSuchBucket" in codes or _bucket_missing(location):
            return InputError(
                [
                    f"`{parameter}` {shown!r}: no such bucket {location.authority!r}{where}; "
                    f"check the bucket name and endpoint"
                ]
            )
        return InputError(
            [
                f"`{parameter}` {shown!r}: no such object or prefix{where}; check the key "
                f"(a prefix must hold at least one object)"
            ]
        )
    status = retry.transient_status(error)
    if status is not None:
        return ConnectionError(
            f"`{parameter}` {shown!r}: the server{where} answered HTTP {status} on each of "
            f"{retry.attempts()} attempt(s); try again later, or raise {retry.RETRIES_ENV}"
        )
    if retry.is_transient(error):
        return ConnectionError(
            f"`{parameter}` {shown!r}: the transfer{where} kept failing after "
            f"{retry.attempts()} attempt(s) ({type(error).__name__}); check the endpoint and the "
            f"network, or raise {retry.RETRIES_ENV}"
        )
    if is_disk_full(error):
        # Not the source's fault, and no retry helps: the local disk it is copied to is full.
        return DiskFullError(
            f"No space left on device while copying `{parameter}` {shown!r} to local disk; "
            f"{OUTPUT_DISK_FIX}"
        )
    return RuntimeError(
        f"`{parameter}` {shown!r}: transfer failed{where}: {type(error).__name__}: "
        f"{redact(str(error))[:300]}"
    )


# The answers of object stores and web servers that mean "these credentials may not do this".
_AUTH_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
    "403", "401",
})


def _error_codes(error: BaseException) -> set[str]:
    """The S3 error codes and HTTP statuses found along the error's chain, as strings."""
    codes = set()
    for link in retry.error_chain(error):
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            codes.add(response.get("Error", {}).get("Code"))
        status = getattr(link, "status", None) or getattr(
            getattr(link, "response", None), "status_code", None
        )
        if isinstance(status, int):
            codes.add(str(status))
    return codes


def _access_fix(scheme: str) -> str:
    if scheme == "s3":
        return (
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the "
            "Secret mounted as env, and that they may read this bucket"
        )
    if scheme == "gs":
        return "check GOOGLE_APPLICATION_CREDENTIALS and the bucket's permissions"
    return "check that the URL is public or that the server accepts this client"


def _connection_reason(error: BaseException) -> str:
    """"connection refused", "host name not resolved", ...: what the socket said, no secrets."""
    import errno
    import socket

    for link in retry.error_chain(error):
        if isinstance(link, socket.gaierror):
            return "host name not resolved"
        if isinstance(link, ConnectionRefusedError) or getattr(link, "errno", None) == (
            errno.ECONNREFUSED
        ):
            return "connection refused"
        if isinstance(link, ConnectionResetError):
            return "connection reset"
    return type(error).__name__


def _bucket_missing(location: Location) -> bool:
    if location.scheme not in ("s3", "gs"):
        return False
    try:
        return not filesystem(location).exists(location.authority)
    except Exception:  # the bucket check is a hint only; the original failure is reported
        return False


def safe_relative(key: str, prefix: str, *, parameter: str, location: Location) -> str:
    """The path of object `key` relative to `prefix`, refusing keys that leave the target dir.

    Raises:
        InputError: for a key with a `..` segment or an absolute path.
    """
    relative = key[len(prefix) :].lstrip("/") if prefix else key
    if not relative or not _inside(relative) or relative.startswith("~"):
        raise InputError(
            [
                f"`{parameter}` {location.display!r}: the object key {key!r} would be written "
                f"outside the target directory (a '..' segment or an absolute path); rename the "
                f"object or point `{parameter}` at a prefix without such keys"
            ]
        )
    return relative


def fetch(
    location: Location,
    workdir: str | os.PathLike,
    *,
    parameter: str = "uri",
    select: Callable[[list[str]], Iterable[str]] | None = None,
) -> Path:
    """Makes a remote file or prefix available on local disk.

    Local locations (file/pvc/pkg) are returned in place (no copy). An s3/gs prefix is copied
    object by object into `workdir`; `select` may narrow the relative paths copied. An http(s) URL
    is one file.

    Args:
        location: a parsed URI, not `hf://` (the Hub has its own cache, see the components).
        workdir: an empty local directory for downloads.
        parameter: the parameter name for messages.
        select: given the relative paths under a prefix, returns those to download.

    Returns:
        The local file or directory.

    Raises:
        InputError: missing file/object/bucket, access denied, an object key escaping the target.
        TimeoutError: the endpoint timed out on every attempt.
        ConnectionError: the endpoint could not be reached on every attempt.
    """
    if location.is_local:
        path = local_path(location, parameter=parameter)
        missing = missing_problems(location, parameter=parameter)
        if missing:
            raise InputError(missing)
        if location.scheme == "pvc":
            _check_inside_claim(path, pvc_root() / location.authority, location, parameter)
        return path
    if location.scheme == "hf":
        raise ValueError("hf:// locations are fetched through huggingface_hub")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    fs = filesystem(location)
    url = location.fsspec_url
    try:
        info = retry.call_with_retries(lambda: fs.info(url), what=f"stat {location.display}")
        if info.get("type") == "directory":
            return _fetch_prefix(fs, location, workdir, parameter=parameter, select=select)
        name = posixpath.basename(urlsplit(url).path) or "data"
        target = workdir / name
        logger.info("Downloading %s (%s bytes)", location.display, info.get("size", "?"))
        retry.call_with_retries(
            lambda: fs.get_file(url, str(target)), what=f"download {location.display}"
        )
        return target
    except InputError:
        raise
    except Exception as error:
        raise describe_failure(error, location, parameter=parameter) from None


def _check_inside_claim(path: Path, claim_root: Path, location: Location, parameter: str) -> None:
    """Refuses a pvc:// path that resolves outside its claim (through a symbolic link).

    The claim is what the pipeline was given access to; a link inside it to /etc or to another
    volume mounted in the same pod must not make those readable through `pvc://`.

    Raises:
        InputError: naming the link (relative to the claim), not where it points.
    """
    root = claim_root.resolve()
    candidates = [path]
    if path.is_dir() and not path.is_symlink():
        candidates += [
            Path(folder) / name
            for folder, folders, files in os.walk(path)
            for name in folders + files
            if (Path(folder) / name).is_symlink()
        ]
    for candidate in candidates:
        if not candidate.resolve().is_relative_to(root):
            link = next(
                (part for part in [candidate, *candidate.parents] if part.is_symlink()), candidate
            )
            try:
                shown_link = link.relative_to(claim_root)
            except ValueError:
                shown_link = link
            raise InputError(
                [
                    f"`{parameter}` {location.display!r}: {str(shown_link)!r} is a symbolic link "
                    f"that leads outside the claim {location.authority!r} (mounted at "
                    f"{claim_root}); kftune reads only what is inside the claim: copy the data "
                    f"into it or point `{parameter}` at a path that stays inside"
                ]
            )


def _fetch_prefix(fs, location, workdir, *, parameter, select) -> Path:
    prefix = f"{location.authority}/{location.path}".rstrip("/")
    keys = retry.call_with_retries(lambda: fs.find(prefix), what=f"list {location.display}")
    # Zero-byte "directory marker" objects (keys ending in '/') hold no data.
    keys = [key for key in keys if not key.endswith("/") and key.rstrip("/") != prefix]
    if not keys:
        raise FileNotFoundError(prefix)
    relatives = {
        safe_relative(key, prefix, parameter=parameter, location=location): key for key in keys
    }
    chosen = sorted(select(sorted(relatives)) if select else relatives)
    target_root = workdir / (posixpath.basename(prefix) or "data")
    logger.info("Downloading %d object(s) from %s", len(chosen), location.display)
    for index, relative in enumerate(chosen, 1):
        target = target_root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        key = relatives[relative]
        retry.call_with_retries(
            lambda key=key, target=target: fs.get_file(f"{location.scheme}://{key}", str(target)),
            what=f"download {location.scheme}://{key}",
        )
        logger.info("  [%d/%d] %s", index, len(chosen), relative)
    return target_root


def copy_tree(source: Path, target: Path, relatives: Iterable[str]) -> None:
    """Copies the files `relatives` (relative to `source`) into `target`; hard links if it can."""
    for relative in relatives:
        origin = (source / relative).resolve()
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(origin, destination)
        except OSError:
            shutil.copy2(origin, destination)


def hub_cache_dir() -> str:
    """The huggingface_hub cache directory, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def hub_offline() -> bool:
    """Whether Hub access is switched off (`HF_HUB_OFFLINE`), read at call time."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_snapshot(
    location: Location,
    *,
    revision: str,
    repo_type: str,
    allow_patterns: list[str] | None = None,
    parameter: str = "uri",
) -> tuple[Path, str]:
    """Downloads (or finds in the cache) a Hub repository snapshot.

    Downloads go to the shared huggingface_hub cache (HF_HUB_CACHE), so an interrupted download
    resumes where it stopped; huggingface_hub shows a progress bar per file. The token comes from
    `HF_TOKEN` through huggingface_hub itself, never through kftune's arguments.

    Args:
        location: an `hf://` location.
        revision: branch, tag or commit; empty for the default branch.
        repo_type: "model" or "dataset".
        allow_patterns: only files matching these globs are fetched.
        parameter: the parameter name for messages.

    Returns:
        The snapshot directory and the commit hash it holds.

    Raises:
        InputError: missing repository/revision, no access, or not cached while offline.
        TimeoutError: the Hub timed out on every attempt.
        ConnectionError: the Hub could not be reached on every attempt.
    """
    from huggingface_hub import snapshot_download

    repo = location.authority
    offline = hub_offline()
    cache = hub_cache_dir()
    logger.info(
        "Fetching %s %s (revision %s)%s",
        repo_type,
        repo,
        revision or "main",
        " from the local cache (offline)" if offline else "",
    )
    try:
        path = retry.call_with_retries(
            lambda: snapshot_download(
                repo,
                repo_type=repo_type,
                revision=revision or None,
                cache_dir=cache,
                allow_patterns=allow_patterns,
                local_files_only=offline,
                endpoint=os.environ.get("HF_ENDPOINT") or None,
            ),
            what=f"download {location.display}",
        )
    except Exception as error:
        raise _hub_failure(error, location, revision=revision, repo_type=repo_type,
                           parameter=parameter, cache=cache) from None
    snapshot = Path(path)
    return snapshot, snapshot.name


def _hub_failure(
    error: Exception, location: Location, *, revision: str, repo_type: str, parameter: str,
    cache: str,
) -> Exception:
    """The error to raise for a failed snapshot download: one line naming the cause and the fix."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, shown = location.authority, location.display
    if isinstance(error, GatedRepoError):
        return InputError([
            f"`{parameter}` {shown!r} is a gated repository and the token has no access; "
            f"accept its terms on the Hub and set HF_TOKEN (from a Secret) to a token of that "
            f"account"
        ])
    if isinstance(error, RevisionNotFoundError):
        return InputError([
            f"`revision` {revision!r} does not exist in {repo_type} repository {repo!r}; use "
            f"an existing branch, tag or commit hash (or leave it empty for the default branch)"
        ])
    if isinstance(error, RepositoryNotFoundError):
        return InputError([
            f"`{parameter}` {shown!r}: no such {repo_type} repository on the Hub, or it is "
            f"private and HF_TOKEN is not set or lacks access; check the name, or set HF_TOKEN "
            f"(from a Secret)"
        ])
    if isinstance(error, LocalEntryNotFoundError):
        offline = hub_offline()
        reason = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the Hub is unreachable"
        return InputError([
            f"`{parameter}` {shown!r} (revision {revision or 'main'!r}) is not in the local "
            f"Hub cache {cache} and {reason}; download it once with network access (or point "
            f"HF_HUB_CACHE at a cache that holds it)"
        ])
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return InputError([
            f"`{parameter}` {shown!r}: the Hub refused the request (HTTP {status}); check "
            f"that HF_TOKEN (from a Secret) is a valid token with read access to {repo!r}"
        ])
    return describe_failure(error, location, parameter=parameter)


def hub_card_metadata(location: Location, *, revision: str, repo_type: str) -> dict[str, Any]:
    """The YAML metadata of a Hub repository's README.md; empty when there is none or on failure.

    Used only to narrow a download (e.g. to one dataset configuration's files); the snapshot
    download that follows reports real errors (missing repository, no access) properly.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.repocard import metadata_load

    try:
        path = hf_hub_download(
            location.authority,
            "README.md",
            repo_type=repo_type,
            revision=revision or None,
            cache_dir=hub_cache_dir(),
            local_files_only=hub_offline(),
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
        return metadata_load(path) or {}
    except Exception as error:  # the snapshot download reports the real problem
        logger.debug("No card metadata for %s: %s", location.display, type(error).__name__)
        return {}
