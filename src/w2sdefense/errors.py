"""The exceptions the CLI reports as one line: user mistakes, and a run stopped by Ctrl-C; values quoted in them."""

import reprlib

QUOTE_LIMIT = 200  # characters of a value an error message quotes

# reprlib abbreviates long containers as it goes, so quoting a huge value never builds its whole repr.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 8
_REPR.maxstring = _REPR.maxother = QUOTE_LIMIT


class UserError(Exception):
    """A problem caused by input or settings, reported without a traceback."""


class Interrupted(Exception):
    """Training stopped on Ctrl-C at a step boundary, its resumable state saved; the message says how to go on."""


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text`, cut to `limit` characters with "…" when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: object) -> str:
    """repr(value) for an error message, cut to about QUOTE_LIMIT characters."""
    return cut(_REPR.repr(value))
