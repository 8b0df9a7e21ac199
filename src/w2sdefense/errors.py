"""The exceptions the CLI reports as one line: user mistakes, and a run stopped by Ctrl-C."""


class UserError(Exception):
    """A problem caused by input or settings, reported without a traceback."""


class Interrupted(Exception):
    """Training stopped on Ctrl-C at a step boundary, its resumable state saved; the message says how to go on."""
