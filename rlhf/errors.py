"""The exception types for user-facing failures: the CLI prints their message without a traceback."""


class ConfigError(ValueError):
    """A user-facing error: bad config value, missing file, unknown env. The message says it all."""


class NonFiniteError(ConfigError):
    """A NaN/inf (or float32 overflow) reached training: from the env, a reward, a loss or a gradient.

    The message names the source (env index and step, loss name, parameter group). Training stops
    before the bad numbers reach the weights or a checkpoint; the CLI prints one line and exits non-zero.
    """


class RankFailedError(ConfigError):
    """Data-parallel: another rank stopped with an error (it prints its own message); this rank stops too,
    at the same point, instead of waiting in a collective the failed rank never enters."""
