"""The project's error types: two ideas, each with one class.

- :class:`InputError`: bad user input (a file, a parameter). ``str(e)`` is one line that
  names the file or parameter and the problem; the CLI prints it and exits 2, a widget
  shows it in its status line. :class:`GPUUnavailableError` is the same idea for a GPU
  that was asked for and cannot be used.
- :class:`Cancelled`: the user asked a job to stop (a ``threading.Event`` was set, or
  Ctrl-C). Nothing that looks complete is left behind.
- :class:`JobFailed`: a job failed for a reason that is not the user's input; ``str(e)``
  is one line. Widgets report it, the CLI exits 1.
"""


class InputError(ValueError):
    """Bad user input (file, parameter). ``str(e)`` is one line suitable for the CLI/GUI."""


class GPUUnavailableError(RuntimeError):
    """A GPU was asked for and none is usable; the message says why."""


class Cancelled(RuntimeError):
    """A job stopped because the user cancelled it."""


class JobFailed(RuntimeError):
    """A job failed; ``str(e)`` is one line."""


#: The public name of 0.1.0, kept: a cancelled search raises :class:`Cancelled`.
SearchCancelled = Cancelled


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
