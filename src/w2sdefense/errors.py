"""The one exception type for mistakes a user can make: the CLI prints it as one line."""


class UserError(Exception):
    """A problem caused by input or settings, reported without a traceback."""
