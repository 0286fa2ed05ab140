"""The vision encoder stage: CLIP image and text embeddings, cached by image content hash.

The model is ``settings.clip_model``: a Hugging Face hub name already in the local
cache, or a folder saved with ``save_pretrained``. It is loaded with
``local_files_only=True``, so nothing is downloaded at run time. When no model is
configured, ``VisionEncoder.configured`` is False and the rest of Sightline runs
without image embeddings.

Example::

    encoder = VisionEncoder(settings=settings)
    encoder.warm_up()
    vectors = encoder.embed_images([image])          # one unit-length row per image
    labels = encoder.zero_shot(image, ["a diagram", "a dog", "a cat"])
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.settings import Settings
from core.types import ImageInput, SightlineError

logger = logging.getLogger(__name__)

MEMORY_CACHE_SIZE = 256
"""Image embeddings kept in memory; the least recently used is evicted first."""
EMBED_BATCH_SIZE = 16
DEFAULT_ZERO_SHOT_LABELS = (
    "a screenshot of an error message",
    "a screenshot of a settings page",
    "a screenshot of a sign-in page",
    "a screenshot of a list of files",
    "a screenshot of a log or a terminal",
    "a photo of a computer screen",
    "a diagram",
    "a photo",
)
"""Labels scored by ``zero_shot`` when the caller gives none."""
NO_VISION_MODEL_MESSAGE = "No vision model is configured (SIGHTLINE_CLIP_MODEL), so images are read by OCR only."

_no_model_logged = False
_no_model_lock = threading.Lock()


@dataclass(frozen=True)
class LabelScore:
    """A zero-shot label and its softmax probability among the labels scored together."""

    label: str
    score: float


def log_missing_vision_model(settings: Settings) -> bool:
    """Log once per process that no vision model is configured; return True when none is."""
    global _no_model_logged
    if settings.clip_model:
        return False
    with _no_model_lock:
        if not _no_model_logged:
            logger.warning(NO_VISION_MODEL_MESSAGE)
            _no_model_logged = True
    return True


class VisionEncoder:
    """CLIP image and text embeddings through transformers, loaded lazily on first use."""

    def __init__(self, *, settings: Settings) -> None:
        self.settings = settings
        self.model_name: str | None = settings.clip_model
        self._model = None
        self._processor = None
        self._dimension: int | None = None
        self._load_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._memory_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def configured(self) -> bool:
        return bool(self.model_name)

    @property
    def dimension(self) -> int:
        self.warm_up()
        assert self._dimension is not None
        return self._dimension

    @property
    def cache_dir(self) -> Path:
        """Folder of the on-disk embedding cache for this model.

        NOTE: the folder is named after the model name only, so replacing the weights
        in a model folder without renaming it keeps serving the old embeddings.
        """
        return self.settings.data_dir / "cache" / "clip" / _model_slug(self.model_name or "none")

    def warm_up(self) -> None:
        """Load the CLIP model and processor; raises SightlineError naming the model when that fails."""
        if not self.configured:
            raise SightlineError(f"{NO_VISION_MODEL_MESSAGE} Set SIGHTLINE_CLIP_MODEL to a CLIP model folder.")
        if self._model is not None:
            return

        with self._load_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            model, processor = _load_clip(self.model_name)
            self._processor = processor
            self._dimension = int(model.config.projection_dim)
            self._model = model
            logger.info("Loaded vision model %s (dimension %d) in %.0f ms", self.model_name, self._dimension,
                        (time.perf_counter() - started) * 1000)

    def embed_images(self, images: list[ImageInput]) -> np.ndarray:
        """Return one unit-length embedding row per image, computing only those not cached.

        The cache key is the model and the image's content hash (``ImageInput.id``), in
        memory first and then in ``cache_dir`` as ``.npy`` files.
        """
        rows: list[np.ndarray | None] = [self._cached(image.id) for image in images]
        missing = [index for index, row in enumerate(rows) if row is None]

        for batch_start in range(0, len(missing), EMBED_BATCH_SIZE):
            batch = missing[batch_start:batch_start + EMBED_BATCH_SIZE]
            vectors = self._compute_image_embeddings([images[index].image for index in batch])
            for index, vector in zip(batch, vectors):
                rows[index] = vector
                self._store(images[index].id, vector)

        if not rows:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack(rows).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Return one unit-length CLIP text embedding row per text (not cached)."""
        self.warm_up()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)

        import torch

        inputs = self._processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            output = self._model.get_text_features(input_ids=inputs["input_ids"],
                                                   attention_mask=inputs["attention_mask"])
        return _normalize(_features(output))

    def zero_shot(self, image: ImageInput, labels: list[str] | tuple[str, ...] = DEFAULT_ZERO_SHOT_LABELS, *,
                  top_k: int = 3) -> list[LabelScore]:
        """Score ``labels`` for the image by CLIP similarity and return the ``top_k`` best, highest first."""
        if not labels:
            return []
        image_vector = self.embed_images([image])[0]
        text_vectors = self.embed_texts(list(labels))
        logit_scale = float(self._model.logit_scale.detach().exp())
        logits = logit_scale * (text_vectors @ image_vector)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities)[:top_k]
        return [LabelScore(label=labels[index], score=float(probabilities[index])) for index in order]

    def _cached(self, image_id: str) -> np.ndarray | None:
        """Return the cached embedding of an image, promoting a disk hit into memory."""
        with self._cache_lock:
            vector = self._memory_cache.get(image_id)
            if vector is not None:
                self._memory_cache.move_to_end(image_id)
                self.cache_hits += 1
                return vector

        path = self._cache_path(image_id)
        if path.is_file():
            try:
                vector = np.load(path)
            except (OSError, ValueError) as error:
                logger.warning("Ignoring the unreadable embedding cache file %s: %s", path, error)
            else:
                self._remember(image_id, vector)
                with self._cache_lock:
                    self.cache_hits += 1
                return vector

        with self._cache_lock:
            self.cache_misses += 1
        return None

    def _store(self, image_id: str, vector: np.ndarray) -> None:
        self._remember(image_id, vector)
        path = self._cache_path(image_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp.npy")
            np.save(temporary, vector)
            temporary.replace(path)
        except OSError as error:
            logger.warning("Could not write the embedding cache file %s: %s", path, error)

    def _remember(self, image_id: str, vector: np.ndarray) -> None:
        with self._cache_lock:
            self._memory_cache[image_id] = vector
            self._memory_cache.move_to_end(image_id)
            while len(self._memory_cache) > MEMORY_CACHE_SIZE:
                self._memory_cache.popitem(last=False)

    def _cache_path(self, image_id: str) -> Path:
        return self.cache_dir / (image_id.replace(":", "-") + ".npy")

    def _compute_image_embeddings(self, pixels: list) -> np.ndarray:
        self.warm_up()
        import torch

        started = time.perf_counter()
        inputs = self._processor(images=pixels, return_tensors="pt")
        with torch.no_grad():
            output = self._model.get_image_features(pixel_values=inputs["pixel_values"])
        vectors = _normalize(_features(output))
        logger.debug("Embedded %d images in %.0f ms", len(pixels), (time.perf_counter() - started) * 1000)
        return vectors


def _load_clip(model_name: str):
    """Load a CLIP model and its processor from a local folder or the local hub cache, never downloading."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(model_name, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(model_name, local_files_only=True)
    except (OSError, ValueError) as error:
        raise SightlineError(
            f"Vision model {model_name!r} (SIGHTLINE_CLIP_MODEL) could not be loaded: {error}. "
            "Set it to a folder that contains a CLIP model saved with save_pretrained, "
            "or unset it to run without a vision model."
        ) from error
    model.eval()
    return model, processor


def _features(output) -> np.ndarray:
    """Take the projected embeddings from a get_*_features result.

    transformers 4 returns the tensor itself, and transformers 5 returns a model
    output whose ``pooler_output`` is the projected embedding.
    """
    tensor = output if hasattr(output, "detach") else output.pooler_output
    return tensor.detach().cpu().numpy().astype(np.float32)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _model_slug(model_name: str) -> str:
    """Name a cache folder after the model: its last path part plus a hash of the whole name."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_name.rstrip("/")).name)[:40] or "model"
    return f"{tail}-{hashlib.sha256(model_name.encode()).hexdigest()[:8]}"
