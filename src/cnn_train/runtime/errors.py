"""Errors a user can cause; the CLI prints them as one line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: an unknown name, a missing file, a bad value or a corrupt file."""
