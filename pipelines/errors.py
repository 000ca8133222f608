"""The one error type the `kftune` command reports as a line plus a hint."""


class CliError(RuntimeError):
    """A failure reported as one line plus a hint, exit code `code`.

    A `RuntimeError`, so that callers of the Python API (`kftune.run`, `kftune.submit`) catch
    it as a run's failure.
    """

    def __init__(self, message: str, hint: str = "", code: int = 1):
        super().__init__(message)
        self.hint = hint
        self.code = code
