"""Errors meant for users: the CLI prints their message, without a traceback, and exits non-zero."""


class SparcError(Exception):
    """A user mistake (bad file, name, setting or checkpoint), with a message that says how to fix it."""


class ConfigError(SparcError, ValueError):
    """A setting, curriculum or agent file is invalid."""


class CheckpointError(SparcError):
    """A checkpoint cannot be loaded."""


class SpaceMismatchError(SparcError, ValueError):
    """A policy and an environment disagree on observation or action spaces."""


class TrainingDivergedError(SparcError):
    """Losses, states or gate values became NaN or infinite; the run stopped at its last good checkpoint."""


class RunStoppedError(SparcError):
    """The machine failed a run (a full disk, a folder removed); its last committed evaluation is kept."""
