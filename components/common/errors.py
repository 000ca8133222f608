"""Errors for bad input, reported all at once.

A bad input is a `ValueError` whose message names the parameter, the rule, the value received and
the fix. When several inputs are wrong, `Problems` collects them so the user sees all of them in one
run instead of fixing them one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable


class InputError(ValueError):
    """One or more bad inputs. `problems` holds one line per bad input."""

    def __init__(self, problems: Iterable[str]):
        from .secrets import redact_text

        # One line per problem, each once (several steps' checks may find the same one), never
        # quoting a credential.
        self.problems = list(dict.fromkeys(redact_text(problem) for problem in problems))
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems:\n" + "\n".join(
                f"  - {problem}" for problem in self.problems
            )
        super().__init__(message)


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
