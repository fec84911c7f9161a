"""The one exception type that means "the user's input is wrong" (exit code 2)."""


class KdsearchError(Exception):
    """A problem the user can fix. The message names the file, key or path and the fix.

    The CLI prints it as one line on stderr and exits 2, without a traceback.
    Anything else that escapes is a bug (exit 1, traceback).
    """
