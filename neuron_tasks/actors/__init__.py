"""Actors: thin shells over plain functions that live in the feature packages.

Each module declares its actors on Dramatiq's global broker when imported (set it first,
e.g. with `neuron_tasks.set_default_broker()`); importing opens no connection. Run them
with `neuron-tasks worker neuron_tasks.actors.<module>`.
"""
