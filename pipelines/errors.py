"""The one error type the `kftune` command reports as a line plus a hint."""


class CliError(Exception):
    """A failure reported as one line plus a hint, exit code `code`."""

    def __init__(self, message: str, hint: str = "", code: int = 1):
        super().__init__(message)
        self.hint = hint
        self.code = code
