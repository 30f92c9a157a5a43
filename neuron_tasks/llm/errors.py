"""Errors of LLM and queue jobs.

Transient errors (rate limited, provider down, timeouts, open circuit) are retried with
backoff, honouring `retry_after_s`; permanent ones (the provider refused the request, its
reply is malformed, a host off the allow-list, a statement timeout) go straight to the dead
letters with the provider's own message.
"""

from __future__ import annotations

from neuron_tasks.errors import NeuronTasksError


class LlmError(NeuronTasksError):
    """Base class of the errors of LLM and queue jobs."""


class TransientError(LlmError):
    """Worth retrying later; `retry_after_s` says when, if the provider said."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(TransientError):
    """The provider answered 429, or our shared rate-limit state says wait."""


class ProviderUnavailable(TransientError):
    """5xx, timeout or connection error."""


class CircuitOpen(TransientError):
    """The provider kept failing; calls are refused until the circuit closes."""


class PermanentError(LlmError):
    """Retrying will not help: the message goes to the dead letters."""


class ProviderRejected(PermanentError):
    """The provider refused the request (4xx other than 429), with its message."""


class MalformedReply(PermanentError):
    """The provider's answer is not what its API promises."""


class NotSupported(PermanentError):
    """The provider cannot do this operation (e.g. completion with the local provider)."""


class HostNotAllowed(PermanentError):
    """http_call to a host that is not on llm_http_call_allow_hosts."""


class ResponseTooLarge(PermanentError):
    """http_call response body over llm_http_call_max_bytes."""


class SqlTaskTimeout(PermanentError):
    """sql_task's statement ran past its statement_timeout."""


class InvalidRequest(PermanentError, ValueError):
    """The job's arguments are not valid."""
