"""Moved to neuron_tasks.testing.fake_llm (this path works for one more release)."""

from neuron_tasks._moved import alias

alias(__name__, "neuron_tasks.testing.fake_llm")
