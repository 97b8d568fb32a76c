"""Errors a user can cause and fix: the CLI prints them as one line, with no traceback."""


class UserError(Exception):
    """Bad input from the user: config, command line, environment id, checkpoint, run directory.

    The message is one line that names the problem (and, for config problems, the field's path).
    """


class ConfigError(UserError):
    """The configuration is invalid. The message starts with the field's dotted path."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, or does not match the configuration."""


class EnvironmentSpecError(UserError):
    """The environment id is unknown, or its spaces are not ones DQN can handle."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (a full disk, say); the previous one is intact."""


class NonFiniteError(UserError):
    """A NaN or infinity where numbers must be finite: an environment's observation or reward,
    or too many learner updates in a row. The message names where it came from."""


class RunDirectoryError(UserError):
    """The run directory is in use by another writer, or is not a distdqn run."""


class RunAborted(UserError):
    """A process the run cannot do without died or stalled; the last checkpoint is intact."""
