"""Errors that carry a message meant for the user: the CLI prints them as one line, without a traceback."""


class SigverifyError(Exception):
    """A problem with the user's input or settings; the message says what was wrong and what is expected."""


class DataError(SigverifyError):
    """A dataset folder or image file that cannot be read as expected."""


class ConfigError(SigverifyError):
    """A setting (flag, profile, config file) that is not accepted."""
