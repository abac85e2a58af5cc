"""Errors that are the user's to fix: the CLI prints their message without a traceback."""


class UserError(Exception):
    """Bad input, a missing file, an unreachable service: something the message tells how to fix."""
