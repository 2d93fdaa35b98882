"""User-facing error types: one clear line naming the file and the problem."""


class InputError(ValueError):
    """Bad user input (file, parameter). ``str(e)`` is one line suitable for the CLI/GUI."""


class GPUUnavailableError(RuntimeError):
    """A GPU was asked for and none is usable; the message says why."""


class SearchCancelled(RuntimeError):
    """Raised inside a search when the user cancelled it."""
