"""Errors a user can act on. Each message names the fix."""


class SpecplugError(Exception):
    """Base class: a user-facing error (the CLI prints it and exits with code 2)."""


class ConfigError(SpecplugError, ValueError):
    """Bad algorithm name, option, budget or sampling setting."""


class DraftTreeError(SpecplugError, ValueError):
    """A draft tree breaks the core contract."""


class ModelError(SpecplugError):
    """A model cannot be found, loaded or used as asked."""
