"""Typed errors for everything a user can get wrong.

Library code raises these; ``cli.main`` is the one place that turns them into a single line on
stderr with exit code 2 (the traceback only under ``--debug``). Each message names the key, file
or value at fault and says what to do about it.
"""


class FastdinoError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class ConfigError(FastdinoError):
    """A preset, config file or ``key=value`` override that does not validate."""


class CheckpointError(FastdinoError):
    """A checkpoint file that is missing, foreign, truncated, too new or unsafe."""


class DataError(FastdinoError):
    """A dataset path or image file that cannot be used."""
