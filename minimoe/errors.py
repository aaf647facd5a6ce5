"""The errors minimoe raises for bad input. Each message names the file, tensor or field,
and says what was expected against what was found."""


class MinimoeError(Exception):
    """Base of every error minimoe raises on purpose; the CLI prints these without a traceback."""


class CheckpointError(MinimoeError, ValueError):
    """A checkpoint folder or file that cannot be loaded: missing, truncated, misnamed, misshapen."""


class DataError(MinimoeError, ValueError):
    """Training or evaluation data that cannot be used: empty, binary, too short."""


class WriteError(MinimoeError, OSError):
    """A file could not be written (disk full, no permission, a file where a folder should be).
    The message names the file; what was there before is left as it was."""
