"""LLM and queue jobs: providers (local sentence-transformers, OpenAI-compatible HTTP), the
result cache, token usage, shared rate limits and circuit breaker, HTTP and SQL tasks.

The actors live in neuron_tasks.llm.actors; everything here is plain functions and classes
that work without a broker. torch, sentence-transformers and httpx are imported on use.
"""

from neuron_tasks.llm.service import EmbedRequest, LlmService
from neuron_tasks.llm.settings import LlmSettings
from neuron_tasks.llm.usage import UsageRow, record_usage, record_usage_many

__all__ = ["EmbedRequest", "LlmService", "LlmSettings", "UsageRow", "record_usage", "record_usage_many"]
