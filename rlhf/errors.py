"""The one exception type for user mistakes: the CLI prints its message without a traceback."""


class ConfigError(ValueError):
    """A user-facing error: bad config value, missing file, unknown env. The message says it all."""
