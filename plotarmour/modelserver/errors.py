"""Failures the servicer turns into status codes; torch-free so the servicer is too."""


class InvalidArgument(ValueError):
    """The caller's mistake (bad token id, empty prompt, context over the limit)."""


class Overloaded(RuntimeError):
    """A bound (sessions, queued work) is reached; the caller may retry later."""
