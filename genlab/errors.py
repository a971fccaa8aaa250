"""Typed errors shared by every layer.

`GenlabError` marks a *user* error (bad path, bad config, malformed input): the CLI prints its
message and exits non-zero without a traceback. Internal invariants use assertions instead.
"""


class GenlabError(Exception):
    """A problem the user can fix; the message names it."""


class ConfigError(GenlabError):
    """A configuration value is missing, out of range or inconsistent."""


class CheckpointError(GenlabError):
    """A checkpoint or model directory is missing, corrupt or does not match the model."""


class TokenizerError(GenlabError):
    """Tokenizer file or input problem (e.g. a disallowed special token in the text)."""
