"""Errors that a user can fix. The CLI prints them as one line and exits with code 2."""


class SelfpruneError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""
