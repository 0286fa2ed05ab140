"""Reference images of the knowledge base, and query by screenshot against them.

The reference images are the images that documents reference (Markdown image
links, HTML ``<img>`` tags, MDX components with a ``src`` attribute) plus any image
file in the knowledge-base folder. Each distinct file content gets its OCR text,
a perceptual hash, and its CLIP vector when a vision model is configured.

A user's image is matched three ways, strongest first:

- ``near_duplicate``: 256-bit pHash within NEAR_DUPLICATE_MAX_BITS of one of the
  reference's crop views. Resizing and JPEG recompression barely change a pHash, and
  the crop views (up to 6 % off each axis) absorb a few percent of cropping.
- ``semantic``: CLIP cosine similarity of the images, when a model is configured.
- ``ocr_text``: overlap of the words OCR read in both images.

Records live in SQLite in the data folder, keyed by file content hash, so a
re-index reads only new files. CLIP vectors live in a Chroma collection
``<prefix>_images`` whose metadata records the model and dimension. A collection
built with another model is dropped and rebuilt.

Example::

    index = ReferenceImageIndex(settings=settings, knowledge_base=kb, encoder=encoder, ocr=read_text)
    report = index.index()
    matches = index.query(image, ocr_text="Oh no. Error running app.")
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import imagehash
import numpy as np
from PIL import Image

from core.knowledge_base import IMAGE_SUFFIXES, KnowledgeBase
from core.retrieval import tokenize
from core.settings import Settings
from core.types import ImageInput, SightlineError
from core.vision import VisionEncoder

logger = logging.getLogger(__name__)

MatchKind = Literal["near_duplicate", "semantic", "ocr_text"]

IMAGES_COLLECTION = "images"
DATABASE_NAME = "reference_images.sqlite3"
HASH_VERSION = "phash16-views36-v2"
"""Changes whenever the hashing below changes, so stored hashes are recomputed."""
HASH_SIZE = 16
"""pHash side: 16 x 16 DCT coefficients give 256 bits."""
HASH_BITS = HASH_SIZE * HASH_SIZE
HASH_WORDS = HASH_BITS // 64
HASH_INPUT_MAX_SIDE_PX = 512
"""Images are shrunk to this longest side before hashing; pHash itself works on 64 x 64 pixels."""
CROP_STEP = 0.03
"""Crop views remove 0, 3 or 6 % of each axis, split between the two edges in the ways listed below."""
CROP_SPLITS = ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0))
"""(start, end) crop in steps of CROP_STEP, per axis; 6 x 6 = 36 views per reference image."""
NEAR_DUPLICATE_MAX_BITS = 32
"""Largest pHash Hamming distance (of 256 bits) that counts as the same screen.

Measured on 15 reference screenshots: 60 % resizing, 3 % crops and JPEG quality 60
stay within 6 bits. Different screens with the same dialog layout differ by 44 bits
or more, while the same error screen showing other data differs by 14 to 22 bits.
"""
SEMANTIC_MIN_SIMILARITY = 0.92
"""Smallest CLIP cosine similarity between two images that counts as a semantic match.

NOTE: an estimate. No real CLIP model was available to measure it on screenshots.
"""
OCR_MIN_DICE = 0.5
"""Smallest Dice overlap of the word sets that counts as an OCR text match."""
OCR_MIN_SHARED_WORDS = 4
SEMANTIC_CANDIDATES = 5
KIND_PRIORITY: dict[str, int] = {"near_duplicate": 0, "semantic": 1, "ocr_text": 2}


@dataclass
class ImageMatch:
    """A reference image that matches the user's image, with the section that shows it."""

    kind: MatchKind
    score: float
    """Similarity from 0 to 1: 1 - distance / 256 for pHash, cosine for CLIP, Dice for OCR text."""
    image_path: str
    """Path of the reference image relative to the knowledge-base folder."""
    content_id: str
    section_id: str | None
    """Section that references the image, or None for an image file no document references."""
    doc_path: str | None
    distance_bits: int | None = None
    """pHash Hamming distance for ``near_duplicate`` matches."""


@dataclass
class ImageIndexReport:
    """Changes made by one indexing run of the reference images."""

    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: int = 0
    """Stored image contents no longer in the folder."""
    failed: dict[str, str] = field(default_factory=dict)
    """Image path to the reason it could not be indexed."""
    unresolved: list[str] = field(default_factory=list)
    """Image references in documents that name no file inside the knowledge-base folder."""
    references: int = 0
    """(image, section) pairs recorded."""
    embedded: int = 0
    rebuilt: bool = False
    """True when the CLIP collection was dropped because another model or dimension built it."""
    elapsed_ms: float = 0.0

    @property
    def images_total(self) -> int:
        return len(self.added) + len(self.unchanged)

    def summary(self) -> str:
        return (f"{self.images_total} reference images ({len(self.added)} new, {len(self.failed)} failed), "
                f"{self.references} section references, {len(self.unresolved)} unresolved, "
                f"{self.embedded} embedded")


@dataclass
class _Reference:
    """A reference image path and the section that shows it."""

    path: str
    content_id: str
    section_id: str | None
    doc_path: str | None


def hash_views(image: Image.Image) -> np.ndarray:
    """Compute the 256-bit pHash of each crop view of an image, as a (views, HASH_WORDS) uint64 array."""
    grey = _shrunk_grey(image)
    width, height = grey.size
    rows = []
    for left_steps, right_steps in CROP_SPLITS:
        for top_steps, bottom_steps in CROP_SPLITS:
            box = (round(width * CROP_STEP * left_steps), round(height * CROP_STEP * top_steps),
                   width - round(width * CROP_STEP * right_steps), height - round(height * CROP_STEP * bottom_steps))
            rows.append(_phash_words(grey.crop(box)))
    return np.stack(rows)


def hash_query(image: Image.Image) -> np.ndarray:
    """Compute the 256-bit pHash of a whole image as HASH_WORDS uint64 words."""
    return _phash_words(_shrunk_grey(image))


def _shrunk_grey(image: Image.Image) -> Image.Image:
    """Convert to greyscale with the longest side at most HASH_INPUT_MAX_SIDE_PX.

    A box reduction by an integer factor comes first, because Lanczos on a full
    2336 x 1286 screenshot takes tens of milliseconds.
    """
    factor = max(image.size) // (2 * HASH_INPUT_MAX_SIDE_PX)
    if factor >= 2:
        image = image.reduce(factor)
    grey = image.convert("L")
    scale = HASH_INPUT_MAX_SIDE_PX / max(grey.size)
    if scale < 1:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.LANCZOS)
    return grey


def _phash_words(grey: Image.Image) -> np.ndarray:
    bits = imagehash.phash(grey, hash_size=HASH_SIZE).hash.flatten()
    return np.packbits(bits).view("<u8").copy()


class HashTable:
    """pHash views of many images in word-major arrays, for a vectorized Hamming-distance scan."""

    def __init__(self, views_per_image: list[np.ndarray]) -> None:
        self.count = len(views_per_image)
        self.views = len(CROP_SPLITS) ** 2
        if views_per_image:
            stacked = np.stack(views_per_image)  # (images, views, words)
        else:
            stacked = np.zeros((0, self.views, HASH_WORDS), dtype=np.uint64)
        # One contiguous array per word keeps each XOR and popcount a single pass over memory.
        self.words = [np.ascontiguousarray(stacked[:, :, word].reshape(-1)) for word in range(HASH_WORDS)]

    def nearest(self, query: np.ndarray, *, max_bits: int) -> list[tuple[int, int]]:
        """Return (image index, distance) pairs within ``max_bits``, nearest first; distance is the best view's."""
        if self.count == 0:
            return []
        distances = np.bitwise_count(self.words[0] ^ query[0]).astype(np.uint16)
        for word in range(1, HASH_WORDS):
            distances += np.bitwise_count(self.words[word] ^ query[word])
        best = distances.reshape(self.count, self.views).min(axis=1)
        hits = np.flatnonzero(best <= max_bits)
        hits = hits[np.argsort(best[hits], kind="stable")]
        return [(int(index), int(best[index])) for index in hits]


class ReferenceImageIndex:
    """Reference images of the knowledge base with their hashes, OCR text, CLIP vectors and sections."""

    def __init__(self, *, settings: Settings, knowledge_base: KnowledgeBase, encoder: VisionEncoder,
                 ocr: Callable[[ImageInput], str], near_duplicate_max_bits: int = NEAR_DUPLICATE_MAX_BITS,
                 semantic_min_similarity: float = SEMANTIC_MIN_SIMILARITY) -> None:
        self.settings = settings
        self.knowledge_base = knowledge_base
        self.encoder = encoder
        self.ocr = ocr
        self.near_duplicate_max_bits = near_duplicate_max_bits
        self.semantic_min_similarity = semantic_min_similarity
        self._lock = threading.RLock()
        self._collection = None
        self._loaded = False
        self._content_ids: list[str] = []
        self._hash_table = HashTable([])
        self._words: list[set[str]] = []
        self._references: dict[str, list[_Reference]] = {}

    @property
    def database_path(self) -> Path:
        return self.settings.data_dir / DATABASE_NAME

    @property
    def collection_name(self) -> str:
        return f"{self.settings.collection_prefix}_{IMAGES_COLLECTION}"

    def warm_up(self) -> None:
        """Load the stored records and check the CLIP collection, re-indexing it after a model switch."""
        with self._lock:
            self._load()
            if self.encoder.configured:
                report = ImageIndexReport()
                collection = self._open_collection(report)
                if report.rebuilt or collection.count() < len(self._content_ids):
                    self._embed_missing(collection, report)

    def index(self, *, progress: bool = False) -> ImageIndexReport:
        """Bring the records in line with the knowledge-base folder; only new file contents are read.

        Call after KnowledgeBase.index, because the image references come from the indexed sections.
        """
        started = time.perf_counter()
        report = ImageIndexReport()
        kb_dir = Path(self.settings.kb_dir)

        with self._lock, self._connect() as database:
            references, paths = self._collect_references(kb_dir, report)
            known = {row[0] for row in database.execute("SELECT content_id FROM images")}
            content_by_path = self._index_files(database, kb_dir, paths, known, report, progress=progress)

            reference_rows = [
                (reference.path, content_by_path[reference.path], reference.section_id, reference.doc_path)
                for reference in references if reference.path in content_by_path
            ]
            database.execute("DELETE FROM refs")
            database.executemany("INSERT INTO refs VALUES (?, ?, ?, ?)", reference_rows)
            report.references = sum(1 for row in reference_rows if row[2] is not None)

            present = set(content_by_path.values())
            stale = sorted(known - present)
            database.executemany("DELETE FROM images WHERE content_id = ?", [(content_id,) for content_id in stale])
            report.removed = len(stale)
            database.commit()

            self._loaded = False
            self._load()
            if self.encoder.configured:
                collection = self._open_collection(report)
                if stale:
                    collection.delete(ids=stale)
                self._embed_missing(collection, report)

        report.elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info("Indexed reference images of %s in %.0f ms: %s", kb_dir, report.elapsed_ms, report.summary())
        for path, reason in report.failed.items():
            logger.error("Could not index reference image %s: %s", path, reason)
        return report

    def query(self, image: ImageInput, *, ocr_text: str = "", limit: int = 5) -> list[ImageMatch]:
        """Match an image against the reference images, best first, one entry per (image, section) pair.

        Near-duplicates come first, then semantic matches, then OCR text matches, each by score.
        """
        with self._lock:
            self._load()
            best: dict[str, tuple[MatchKind, float, int | None]] = {}

            query_hash = hash_query(image.image)
            for index, distance in self._hash_table.nearest(query_hash, max_bits=self.near_duplicate_max_bits):
                best[self._content_ids[index]] = ("near_duplicate", 1.0 - distance / HASH_BITS, distance)

            if self.encoder.configured and self._content_ids:
                for content_id, similarity in self._semantic_matches(image):
                    best.setdefault(content_id, ("semantic", similarity, None))

            for content_id, dice in self._text_matches(ocr_text):
                best.setdefault(content_id, ("ocr_text", dice, None))

            ranked = sorted(best.items(), key=lambda item: (KIND_PRIORITY[item[1][0]], -item[1][1]))
            matches = [
                ImageMatch(kind=kind, score=score, image_path=reference.path, content_id=content_id,
                           section_id=reference.section_id, doc_path=reference.doc_path, distance_bits=distance)
                for content_id, (kind, score, distance) in ranked
                for reference in self._references.get(content_id, [])
            ]
        return matches[:limit]

    def _collect_references(self, kb_dir: Path, report: ImageIndexReport) -> tuple[list[_Reference], list[str]]:
        """List (image, section) pairs from the indexed sections, plus every image file in the folder."""
        references: list[_Reference] = []
        for reference in self.knowledge_base.image_references():
            if reference.resolved_path is None:
                report.unresolved.append(f"{reference.doc_path}: {reference.ref}")
                continue
            references.append(_Reference(path=reference.resolved_path, content_id="",
                                         section_id=reference.section_id, doc_path=reference.doc_path))

        referenced = {reference.path for reference in references}
        files = sorted(path.relative_to(kb_dir).as_posix() for path in kb_dir.rglob("*")
                       if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES) if kb_dir.is_dir() else []
        for path in files:
            if path not in referenced:
                references.append(_Reference(path=path, content_id="", section_id=None, doc_path=None))
        return references, sorted(referenced | set(files))

    def _index_files(self, database: sqlite3.Connection, kb_dir: Path, paths: list[str], known: set[str],
                     report: ImageIndexReport, *, progress: bool) -> dict[str, str]:
        """Hash and read each new image file; return the content id of every readable path."""
        from core.intake import load_image

        iterator = paths
        if progress:
            from tqdm import tqdm

            iterator = tqdm(paths, desc="Indexing images", unit="image")

        content_by_path: dict[str, str] = {}
        for path in iterator:
            try:
                raw = (kb_dir / path).read_bytes()
            except OSError as error:
                report.failed[path] = f"could not be read ({error.strerror})"
                continue

            content_id = "sha256:" + hashlib.sha256(raw).hexdigest()[:16]
            content_by_path[path] = content_id
            if content_id in known:
                report.unchanged.append(path)
                continue

            try:
                image = load_image(raw, source=path, settings=self.settings)
                text = self.ocr(image)
                views = hash_views(image.image)
            except SightlineError as error:
                del content_by_path[path]
                report.failed[path] = str(error)
                continue

            database.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?)",
                             (content_id, image.width, image.height, text, views.tobytes()))
            known.add(content_id)
            report.added.append(path)
        return content_by_path

    def _connect(self) -> sqlite3.Connection:
        """Open the record database, emptying it when its hashes were computed by another HASH_VERSION."""
        self.database_path.parent.mkdir(parents=True, exist_ok=True)
        database = sqlite3.connect(self.database_path)
        database.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);"
            "CREATE TABLE IF NOT EXISTS images (content_id TEXT PRIMARY KEY, width INTEGER, height INTEGER,"
            " ocr_text TEXT, hashes BLOB);"
            "CREATE TABLE IF NOT EXISTS refs (path TEXT, content_id TEXT, section_id TEXT, doc_path TEXT);"
        )
        row = database.execute("SELECT value FROM meta WHERE key = 'hash_version'").fetchone()
        if row is None or row[0] != HASH_VERSION:
            if row is not None:
                logger.warning("Reference image hashes in %s are of version %s, not %s; recomputing them.",
                               self.database_path, row[0], HASH_VERSION)
            database.execute("DELETE FROM images")
            database.execute("INSERT OR REPLACE INTO meta VALUES ('hash_version', ?)", (HASH_VERSION,))
            database.commit()
        return database

    def _load(self) -> None:
        """Read the records into memory once per index run."""
        if self._loaded:
            return
        with self._connect() as database:
            images = database.execute("SELECT content_id, ocr_text, hashes FROM images ORDER BY content_id").fetchall()
            references = database.execute("SELECT path, content_id, section_id, doc_path FROM refs").fetchall()

        views = len(CROP_SPLITS) ** 2
        self._content_ids = [content_id for content_id, _, _ in images]
        self._words = [set(tokenize(text or "")) for _, text, _ in images]
        self._hash_table = HashTable([np.frombuffer(blob, dtype=np.uint64).reshape(views, HASH_WORDS)
                                      for _, _, blob in images])
        self._references = {}
        for path, content_id, section_id, doc_path in sorted(references, key=lambda row: (row[3] or "~", row[0])):
            self._references.setdefault(content_id, []).append(
                _Reference(path=path, content_id=content_id, section_id=section_id, doc_path=doc_path))
        self._loaded = True

    def _text_matches(self, ocr_text: str) -> list[tuple[str, float]]:
        """Return (content id, Dice overlap) of references whose OCR words overlap the query's enough."""
        query_words = set(tokenize(ocr_text))
        if not query_words:
            return []
        matches = []
        for content_id, words in zip(self._content_ids, self._words):
            shared = len(query_words & words)
            if shared < OCR_MIN_SHARED_WORDS:
                continue
            dice = 2 * shared / (len(query_words) + len(words))
            if dice >= OCR_MIN_DICE:
                matches.append((content_id, dice))
        return sorted(matches, key=lambda match: -match[1])

    def _semantic_matches(self, image: ImageInput) -> list[tuple[str, float]]:
        """Return (content id, cosine similarity) of the nearest reference images by CLIP."""
        collection = self._open_collection(ImageIndexReport())
        count = collection.count()
        if count == 0:
            return []
        vector = self.encoder.embed_images([image])[0]
        result = collection.query(query_embeddings=[vector], n_results=min(SEMANTIC_CANDIDATES, count),
                                  include=["distances"])
        return [(content_id, 1.0 - float(distance))
                for content_id, distance in zip(result["ids"][0], result["distances"][0])
                if 1.0 - float(distance) >= self.semantic_min_similarity]

    def _open_collection(self, report: ImageIndexReport):
        """Open the CLIP collection, dropping it when another model or dimension built it."""
        if self._collection is not None:
            return self._collection

        client = self.knowledge_base.chroma_client()
        expected = {"clip_model": self.encoder.model_name, "dimension": self.encoder.dimension}
        existing = {collection.name for collection in client.list_collections()}
        if self.collection_name in existing:
            collection = client.get_collection(self.collection_name)
            metadata = collection.metadata or {}
            recorded = {key: metadata.get(key) for key in expected}
            if recorded == expected:
                self._collection = collection
                return collection
            logger.warning("Collection %s was built with %s, but the configured vision model is %s. "
                           "Re-indexing its image embeddings.", self.collection_name, recorded, expected)
            client.delete_collection(self.collection_name)
            report.rebuilt = True

        self._collection = client.create_collection(self.collection_name,
                                                     metadata={**expected, "hnsw:space": "cosine"})
        return self._collection

    def _embed_missing(self, collection, report: ImageIndexReport) -> None:
        """Embed the stored reference images that the CLIP collection lacks."""
        from core.intake import load_image

        stored = set(collection.get(include=[])["ids"]) if collection.count() else set()
        missing = [content_id for content_id in self._content_ids if content_id not in stored]
        kb_dir = Path(self.settings.kb_dir)
        for content_id in missing:
            references = self._references.get(content_id)
            if not references:
                continue
            path = references[0].path
            try:
                image = load_image(kb_dir / path, source=path, settings=self.settings)
            except SightlineError as error:
                report.failed[path] = str(error)
                continue
            vector = self.encoder.embed_images([image])[0]
            collection.add(ids=[content_id], embeddings=[vector], metadatas=[{"path": path}])
            report.embedded += 1
