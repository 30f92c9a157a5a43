"""Moved: each part's actors now live in its own folder (neuron_tasks.llm.actors,
neuron_tasks.vectors.actors, neuron_tasks.vectors.tuner_actors, neuron_tasks.vectors.defrag_actors,
neuron_tasks.pipelines.actors). Workers load them by themselves; these paths work for one more release."""
