"""Errors for bad input, reported all at once, and library errors said in the user's terms.

A bad input is a `ValueError` whose message names the parameter, the rule, the value received and
the fix. When several inputs are wrong, `Problems` collects them so the user sees all of them in one
run instead of fixing them one at a time.

Third-party parsers (json, YAML, safetensors, text codecs) say what is wrong but not which of the
user's files or parameters it is, nor what to do. `reading` wraps the one place a user-supplied
file meets such a parser and turns the parser's error into an `InputError` naming the parameter,
the file and the fix. `writing` does the same for a full disk: torch's checkpoint writer reports
one as a bare `RuntimeError` ("PytorchStreamWriter failed writing file ..."), which would read as
a crash worth retrying; it becomes a `DiskFullError`, which no retry or restart repeats.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# What to do when a step's output disk is full (downloads, staging).
OUTPUT_DISK_FIX = ("free space on that disk or give the step more room (a larger volume, emptyDir "
                   "or claim)")
# A filesystem with less free space than this after a write failed is taken to be full.
FULL_DISK_BYTES = 16 * 2**20
_FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_DISK_WORDS = ("No space left on device", "Disk quota exceeded")
# How torch's zip writer reports a write that came up short; it keeps no errno.
_SHORT_WRITE_WORDS = ("PytorchStreamWriter failed writing", "file write failed",
                      "unexpected pos", "iostream error")


class InputError(ValueError):
    """One or more bad inputs. `problems` holds one line per bad input.

    Its message is one line, `N problems: first | second | ...`, since it is the last line of a
    failed step's log (a traceback ends with it) and of `kftune run`'s failure; `listing` puts
    each problem on its own line, for a terminal.
    """

    def __init__(self, problems: Iterable[str]):
        from .secrets import redact_text

        # One line per problem, each once (several steps' checks may find the same one), never
        # quoting a credential.
        self.problems = list(dict.fromkeys(redact_text(problem) for problem in problems))
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems: " + " | ".join(self.problems)
        super().__init__(message)

    def listing(self) -> str:
        """`N problems:` and one indented line per problem (the problem itself when only one)."""
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} problems:\n" + "\n".join(
            f"  - {problem}" for problem in self.problems)


class Problems:
    """Collects bad-input messages and raises them together.

    Example:
        problems = Problems()
        if num_workers < 1:
            problems.add(f"`num_workers` must be >= 1, got {num_workers}")
        problems.raise_if_any()
    """

    def __init__(self) -> None:
        self._messages: list[str] = []

    def add(self, message: str) -> None:
        """Records one bad input."""
        self._messages.append(message)

    def extend(self, messages: Iterable[str]) -> None:
        """Records several bad inputs."""
        self._messages.extend(messages)

    def __bool__(self) -> bool:
        return bool(self._messages)

    @property
    def messages(self) -> list[str]:
        """The messages recorded so far."""
        return list(self._messages)

    def raise_if_any(self) -> None:
        """Raises `InputError` with every recorded message, if there is any.

        Raises:
            InputError: when at least one problem was recorded.
        """
        if self._messages:
            raise InputError(self._messages)


class DiskFullError(OSError):
    """A write failed because its filesystem is full (or over quota): retrying cannot help."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """Yields `error` and the exceptions it was raised from (cause or context), once each."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_disk_full(error: BaseException, directory: str | os.PathLike | None = None) -> bool:
    """Whether `error` (or what it was raised from) is a full disk or an exceeded quota.

    An `OSError` says so by its errno or its text. torch's checkpoint writer raises a
    `RuntimeError` that keeps neither; with `directory` (where the write went), such a short write
    counts as a full disk when that filesystem has less than `FULL_DISK_BYTES` free.
    """
    links = list(error_chain(error))
    for link in links:
        if isinstance(link, DiskFullError):
            return True
        if isinstance(link, OSError) and link.errno in _FULL_DISK_ERRNOS:
            return True
        if any(words in _text(link) for words in _FULL_DISK_WORDS):
            return True
    if directory is None or not any(words in _text(link) for link in links
                                    for words in _SHORT_WRITE_WORDS):
        return False
    try:
        return shutil.disk_usage(directory).free < FULL_DISK_BYTES
    except OSError:
        return False


def _text(error: BaseException) -> str:
    """`str(error)`, or "" for the exceptions whose `__str__` fails (some of aiohttp's do)."""
    try:
        return str(error)
    except Exception:
        return ""


@contextlib.contextmanager
def writing(directory: str | os.PathLike, *, what: str, fix: str) -> Iterator[None]:
    """Raises `DiskFullError` naming `what`, `directory` and `fix` when the block fills the disk.

    Use it around the writes themselves (before any cleanup frees space again), e.g.
    `with writing(staging, what="checkpoint step 10", fix="..."): torch.save(...)`.

    Raises:
        DiskFullError: when the block failed because the filesystem of `directory` is full.
    """
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error, directory):
            raise
        try:
            usage = shutil.disk_usage(directory)
            room = f"{usage.free / 2**20:.0f} MiB free of {usage.total / 2**30:.1f} GiB"
        except OSError:
            room = "free space unknown"
        raise DiskFullError(
            f"No space left on device while writing {what} to {directory} ({room}); {fix}"
        ) from error


def parse_failure(error: BaseException) -> str | None:
    """What a third-party parser's `error` says about the file it read, or None if it is not one.

    The JSON, YAML, safetensors and text-decoding errors are recognized anywhere in the chain
    (transformers, for one, re-raises a JSON error as an `OSError`).
    """
    for link in error_chain(error):
        if isinstance(link, json.JSONDecodeError):
            return (f"is not valid JSON (line {link.lineno} column {link.colno}: {link.msg})")
        if isinstance(link, UnicodeDecodeError):
            return (f"is not {link.encoding} text (byte 0x{link.object[link.start]:02x} at "
                    f"offset {link.start})")
        kind = type(link)
        if kind.__module__.split(".")[0] == "yaml" and kind.__name__.endswith("Error"):
            mark = getattr(link, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(link, "problem", None) or _text(link).splitlines()[0]
            context = getattr(link, "context", None)
            return f"is not valid YAML ({f'{context}: ' if context else ''}{problem}{where})"
        if kind.__name__ == "SafetensorError":
            return f"is not a complete safetensors file ({link}): it is truncated or damaged"
    return None


@contextlib.contextmanager
def reading(path: str | os.PathLike, *, parameter: str, fix: str) -> Iterator[None]:
    """Turns a parser's error about the user's file `path` into an `InputError` with the fix.

    `path` is shown as given: a local path, or the file's place in its source (`s3://b/config.json`).

    The one wrapper for every place a file the user supplied (directly, or inside an artifact or
    source they point at) meets a third-party parser. Errors that are not about the file's content
    pass through unchanged.

    Raises:
        InputError: "`parameter`: PATH is not valid JSON (...); FIX" and the like.
    """
    try:
        yield
    except InputError:
        raise
    except Exception as error:
        reason = parse_failure(error)
        if reason is None:
            raise
        raise InputError([f"`{parameter}`: {path} {reason}; {fix}"]) from error


def read_json_file(path: str | os.PathLike, *, parameter: str, fix: str) -> Any:
    """The JSON value in the user's file `path` (an `@FILE` argument, a config file).

    Raises:
        InputError: when the file cannot be read or is not JSON, naming `parameter`, the file and
            `fix`.
    """
    try:
        with reading(path, parameter=parameter, fix=fix):
            return json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError([f"`{parameter}` names the file {str(path)!r}, which cannot be read: "
                          f"{error.strerror or error}"]) from None
