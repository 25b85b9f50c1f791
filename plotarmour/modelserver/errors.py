"""Failures the servicer turns into status codes; torch-free so the servicer is too."""


class InvalidArgument(ValueError):
    """The caller's mistake (bad token id, empty prompt, context over the limit)."""


class Overloaded(RuntimeError):
    """A bound (sessions, queued work) is reached; the caller may retry later."""


class SessionGone(RuntimeError):
    """The session was closed (by its owner, or by the idle timeout) before this step."""


class NoFirstMessage(TimeoutError):
    """A stream opened and sent nothing within first_message_timeout_s: closed, so that
    silent streams cannot pile up (open sessions have idle_timeout_s for the same reason)."""


class SchedulerDown(RuntimeError):
    """The scheduling loop has stopped (shutdown or a fault): nothing more will run."""


class FingerprintMismatch(ValueError):
    """The client expects another tokenizer than the one this server serves."""


class WorkFailed(RuntimeError):
    """One prefill or Score failed inside the engine: a fault (INTERNAL), but only that
    caller's; the server and its other sessions go on."""
