"""The project's input error, importable from every layer (docs/architecture.md): the config, the
user-plugin registry and the data checks raise it; the command line turns it into exit status 2."""


class ConfigError(ValueError):
    """A config key has a value that is unknown, of the wrong type, or contradicts another key."""
