"""Vector jobs: `embed_and_index` (texts -> embeddings -> index) and `index_vectors`.

Thin shells over `neuron_tasks.vectors`; every worker loads them (`neuron-tasks worker`).
Embedding uses the LLM service (neuron_tasks.llm, the llm extra) when it can be imported;
without it, `embed_and_index` fails with TextEmbeddingUnavailable (not retried) and
`index_vectors` takes vectors directly.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from neuron_tasks.vectors.embed import TextEmbeddingUnavailable

QUEUE = "vectors"


def embed_and_index_items(index: str, items: list[dict[str, Any]], *, tenant: str | None = None) -> dict[str, Any]:
    """items: [{"id": int, "text": str, "metadata": {...}?}]; the text is embedded, stored as the
    item's text (for hybrid search) and indexed. Returns the data sequence and count."""
    from neuron_tasks import vectors
    from neuron_tasks.vectors.embed import embed_texts

    client = vectors.client()
    texts = [str(it["text"]) for it in items]
    mat = embed_texts(client.pool, texts, tenant=tenant)
    seq = client.add(index, [int(it["id"]) for it in items], mat,
                     metadata=[it.get("metadata") for it in items], texts=texts)
    return {"index": index, "added": len(items), "seq": seq}


def index_vector_items(index: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """items: [{"id": int, "vector": [...], "metadata": {...}?, "text": str?}]."""
    from neuron_tasks import vectors

    seq = vectors.client().add(index, [int(it["id"]) for it in items], [it["vector"] for it in items],
                               metadata=[it.get("metadata") for it in items], texts=[it.get("text") for it in items])
    return {"index": index, "added": len(items), "seq": seq}


@dramatiq.actor(actor_name="neuron_tasks.embed_and_index", queue_name=QUEUE, throws=(TextEmbeddingUnavailable,))
def embed_and_index(index: str, items: list[dict[str, Any]], tenant: str | None = None) -> dict[str, Any]:
    return embed_and_index_items(index, items, tenant=tenant)


@dramatiq.actor(actor_name="neuron_tasks.index_vectors", queue_name=QUEUE)
def index_vectors(index: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return index_vector_items(index, items)
