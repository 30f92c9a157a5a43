"""`neuron-tasks cache`: the LLM result cache (the same commands as `neuron-tasks llm cache`)."""

from .llm import cache_app as app

NAME = "cache"
__all__ = ["NAME", "app"]
