"""The driver's one kind of expected failure: reported as one line `error: ...`, exit status 2."""


class UserError(Exception):
    """A bad invocation, or a stage that cannot run with what it was given; nothing was deleted."""

