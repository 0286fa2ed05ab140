"""The knowledge base: document sections embedded into a Chroma collection, indexed incrementally.

Chroma runs embedded (a ``PersistentClient`` in the data folder) unless
``settings.chroma_host`` names a ``chroma run`` server. Sightline always computes
the embeddings itself and hands Chroma an embedding function, so Chroma never
loads its own default model.

Example::

    kb = KnowledgeBase(settings=settings, embedder=TextEmbedder(model=settings.text_embedding_model))
    report = kb.index(settings.kb_dir, progress=True)
    hits = kb.query_dense(embedder.embed(["reset password"])[0], k=5)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from core.documents import SECTIONING_VERSION, find_documents, hash_bytes, read_document, split_sections
from core.embeddings import TextEmbedder
from core.locking import indexing_marker
from core.settings import Settings
from core.types import Section, SightlineError

if TYPE_CHECKING:
    from core.image_index import ImageIndexReport

logger = logging.getLogger(__name__)

SECTIONS_COLLECTION = "sections"
WRITE_BATCH_SIZE = 128
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass
class IndexReport:
    """Changes made by one indexing run, by document path."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    """Documents with no text to index."""
    failed: dict[str, str] = field(default_factory=dict)
    """Document path to the reason it could not be indexed."""
    sections_embedded: int = 0
    sections_total: int = 0
    rebuilt: bool = False
    """True when the collection was dropped because it was built with another embedding model."""
    elapsed_ms: float = 0.0
    images: ImageIndexReport | None = None
    """Reference image changes, set by Sightline.index after the documents are indexed."""

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
                f"{len(self.unchanged)} unchanged, {len(self.empty)} empty, {len(self.failed)} failed; "
                f"{self.sections_embedded} sections embedded, {self.sections_total} in the index")


@dataclass
class ImageReference:
    """An image that a knowledge-base section references."""

    ref: str
    """The path or URL as written in the document."""
    section_id: str
    doc_path: str
    resolved_path: str | None
    """Path relative to the knowledge-base folder, or None when no such file is in the folder."""


def _embedding_function_class():
    """Build the Chroma adapter class lazily, so importing this module does not import chromadb."""
    from chromadb.api.types import Documents, EmbeddingFunction

    class SightlineEmbeddingFunction(EmbeddingFunction[Documents]):
        """Adapter that lets Chroma call a TextEmbedder."""

        def __init__(self, embedder: TextEmbedder) -> None:
            self._embedder = embedder

        def __call__(self, input: Documents) -> list[np.ndarray]:  # noqa: A002 - Chroma's name
            return list(self._embedder.embed(list(input)))

        @staticmethod
        def name() -> str:
            return "sightline-sentence-transformers"

        def get_config(self) -> dict:
            return {"model": self._embedder.model_name}

        @staticmethod
        def build_from_config(config: dict) -> "SightlineEmbeddingFunction":
            return SightlineEmbeddingFunction(TextEmbedder(model=config["model"]))

        def default_space(self) -> str:
            return "cosine"

        def supported_spaces(self) -> list[str]:
            return ["cosine"]

    return SightlineEmbeddingFunction


def open_chroma_client(settings: Settings):
    """Open the embedded store in the data folder, or an HTTP client when a server is configured."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    # Telemetry would send events to a third-party host; Sightline keeps all traffic local.
    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
    if settings.chroma_host:
        try:
            return chromadb.HttpClient(host=settings.chroma_host, port=settings.chroma_port,
                                       settings=chroma_settings)
        except Exception as error:  # chromadb raises plain ValueError/ConnectionError variants
            raise SightlineError(
                f"Chroma server at {settings.chroma_host}:{settings.chroma_port} is not reachable ({error}). "
                "Start it with `chroma run`, or unset SIGHTLINE_CHROMA_HOST to use the embedded store."
            ) from error

    marker = indexing_marker(settings.data_dir)
    if marker.exists():
        logger.warning(
            "An indexing run on %s stopped before it finished (found %s). Deleting the store; "
            "the next index rebuilds it from the documents in %s.", settings.chroma_dir, marker, settings.kb_dir)
        _delete_embedded_store(settings)

    settings.chroma_dir.mkdir(parents=True, exist_ok=True)
    try:
        client = chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
        _check_store(client)
    except Exception as error:  # a damaged SQLite file or HNSW segment raises many exception types
        logger.error(
            "The Chroma store in %s is broken (%s: %s). Deleting it; the next index rebuilds it "
            "from the documents in %s.", settings.chroma_dir, type(error).__name__, error, settings.kb_dir)
        _delete_embedded_store(settings)
        settings.chroma_dir.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
    return client


def _check_store(client) -> None:
    """Read every collection's size and one record, which fails on a store with damaged files."""
    for collection in client.list_collections():
        if collection.count():
            collection.peek(limit=1)


def _delete_embedded_store(settings: Settings) -> None:
    """Delete the embedded store and the indexing marker, and drop Chroma's cached client for the folder."""
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    shutil.rmtree(settings.chroma_dir, ignore_errors=True)
    indexing_marker(settings.data_dir).unlink(missing_ok=True)


class KnowledgeBase:
    """Sections of the knowledge-base documents in Chroma, with an in-memory copy for keyword search."""

    def __init__(self, *, settings: Settings, embedder: TextEmbedder, client=None) -> None:
        self.settings = settings
        self.embedder = embedder
        self._client = client
        self._collection = None
        self._sections: list[Section] | None = None
        self._sections_by_id: dict[str, Section] = {}
        self._write_lock = threading.Lock()
        self.version = 0
        """Incremented after every change, so that derived indexes know to rebuild."""

    @property
    def collection_name(self) -> str:
        return f"{self.settings.collection_prefix}_{SECTIONS_COLLECTION}"

    def _open_collection(self, *, rebuild_report: IndexReport | None = None):
        if self._collection is not None:
            return self._collection

        if self._client is None:
            self._client = open_chroma_client(self.settings)

        expected = {"embedding_model": self.embedder.model_name, "dimension": self.embedder.dimension,
                    "sectioning_version": SECTIONING_VERSION}
        function = _embedding_function_class()(self.embedder)
        existing = {collection.name for collection in self._client.list_collections()}
        if self.collection_name in existing:
            collection = self._client.get_collection(self.collection_name, embedding_function=function)
            metadata = collection.metadata or {}
            recorded = {key: metadata.get(key) for key in expected}
            if recorded != expected:
                logger.warning(
                    "Collection %s was built with %s, but this version expects %s. Rebuilding it.",
                    self.collection_name, recorded, expected,
                )
                self._client.delete_collection(self.collection_name)
                if rebuild_report is not None:
                    rebuild_report.rebuilt = True
            else:
                self._collection = collection
                return collection

        self._collection = self._client.create_collection(
            self.collection_name,
            embedding_function=function,
            metadata={**expected, "hnsw:space": "cosine"},
        )
        return self._collection

    def index(self, kb_dir: Path | None = None, *, progress: bool = False) -> IndexReport:
        """Bring the collection in line with the documents in ``kb_dir``.

        Unchanged documents (same content hash) are not embedded again; changed ones
        are replaced, and documents no longer in the folder are deleted. A document
        that cannot be read is reported in ``failed`` and keeps its old sections.
        """
        kb_dir = Path(kb_dir or self.settings.kb_dir)
        started = time.perf_counter()
        report = IndexReport()

        with self._write_lock:
            collection = self._open_collection(rebuild_report=report)
            # The marker stays behind if this run is killed, and the next start-up rebuilds the store.
            marker = indexing_marker(self.settings.data_dir) if not self.settings.chroma_host else None
            if marker is not None:
                marker.write_text(f"pid {os.getpid()}\n")
            indexed_hashes = self._indexed_document_hashes(collection)
            paths = find_documents(kb_dir)

            iterator = paths
            if progress:
                from tqdm import tqdm

                iterator = tqdm(paths, desc="Indexing", unit="doc")

            seen: set[str] = set()
            for path in iterator:
                relative = path.relative_to(kb_dir).as_posix()
                seen.add(relative)
                self._index_one(collection, path, kb_dir, indexed_hashes.get(relative), report)

            for relative in sorted(set(indexed_hashes) - seen):
                collection.delete(where={"doc_path": relative})
                report.removed.append(relative)

            self._sections = None
            self.version += 1
            report.sections_total = collection.count()
            if marker is not None:
                marker.unlink(missing_ok=True)

        report.elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info("Indexed %s in %.0f ms: %s", kb_dir, report.elapsed_ms, report.summary())
        for relative, reason in report.failed.items():
            logger.error("Could not index %s: %s", relative, reason.removeprefix(f"{relative}: "))
        return report

    def _index_one(self, collection, path: Path, kb_dir: Path, indexed_hash: str | None,
                   report: IndexReport) -> None:
        relative = path.relative_to(kb_dir).as_posix()
        try:
            content_hash = hash_bytes(path.read_bytes())
            if content_hash == indexed_hash:
                report.unchanged.append(relative)
                return
            sections = split_sections(read_document(path, kb_dir=kb_dir))
        except (SightlineError, OSError) as error:
            report.failed[relative] = str(error)
            return

        if indexed_hash is not None:
            collection.delete(where={"doc_path": relative})
        if not sections:
            # NOTE: a document with no text leaves nothing in Chroma to remember it by, so it is
            # reported as empty on every run rather than as unchanged.
            report.empty.append(relative)
            if indexed_hash is not None:
                report.removed.append(relative)
            return
        self._add_sections(collection, sections)
        report.sections_embedded += len(sections)
        (report.updated if indexed_hash is not None else report.added).append(relative)

    def _add_sections(self, collection, sections: list[Section]) -> None:
        for batch_start in range(0, len(sections), WRITE_BATCH_SIZE):
            batch = sections[batch_start:batch_start + WRITE_BATCH_SIZE]
            embeddings = self.embedder.embed([_embedding_text(section) for section in batch])
            collection.add(
                ids=[section.id for section in batch],
                documents=[section.text for section in batch],
                embeddings=embeddings,
                metadatas=[_section_metadata(section) for section in batch],
            )

    @staticmethod
    def _indexed_document_hashes(collection) -> dict[str, str]:
        records = collection.get(include=["metadatas"])
        return {metadata["doc_path"]: metadata["doc_hash"] for metadata in records["metadatas"] or []}

    def sections(self) -> list[Section]:
        """Return every indexed section, read from Chroma once per index version."""
        if self._sections is None:
            collection = self._open_collection()
            records = collection.get(include=["documents", "metadatas"])
            sections = [
                _section_from_record(section_id, document, metadata)
                for section_id, document, metadata in zip(records["ids"], records["documents"],
                                                          records["metadatas"])
            ]
            sections.sort(key=lambda section: (section.doc_path, section.start))
            self._sections = sections
            self._sections_by_id = {section.id: section for section in sections}
        return self._sections

    def get_section(self, section_id: str) -> Section:
        """Return one section by id; raises KeyError naming the id when it is not indexed."""
        self.sections()
        try:
            return self._sections_by_id[section_id]
        except KeyError:
            raise KeyError(f"Section {section_id!r} is not in the knowledge base") from None

    def query_dense(self, vector: np.ndarray, *, k: int) -> list[tuple[str, float]]:
        """Return up to ``k`` (section id, cosine similarity) pairs nearest to ``vector``, best first."""
        collection = self._open_collection()
        count = collection.count()
        if count == 0:
            return []
        result = collection.query(query_embeddings=[vector], n_results=min(k, count), include=["distances"])
        return [(section_id, 1.0 - float(distance))
                for section_id, distance in zip(result["ids"][0], result["distances"][0])]

    def chroma_client(self):
        """Return the Chroma client of this knowledge base, opening the store on first use."""
        if self._client is None:
            self._client = open_chroma_client(self.settings)
        return self._client

    def image_references(self) -> list[ImageReference]:
        """List every image that an indexed section references, resolved inside the knowledge-base folder."""
        kb_dir = Path(self.settings.kb_dir)
        by_name: dict[str, list[Path]] = {}
        if kb_dir.is_dir():
            for path in kb_dir.rglob("*"):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    by_name.setdefault(path.name.lower(), []).append(path)

        references = []
        for section in self.sections():
            for ref in section.image_refs:
                resolved = resolve_image_reference(ref, section.doc_path, kb_dir, by_name)
                references.append(ImageReference(ref=ref, section_id=section.id, doc_path=section.doc_path,
                                                 resolved_path=resolved))
        return references


def resolve_image_reference(ref: str, doc_path: str, kb_dir: Path, by_name: dict[str, list[Path]]) -> str | None:
    """Find the file an image reference names: relative to its document, then to the folder, then by name."""
    if "://" in ref or ref.startswith("data:"):
        return None
    clean = ref.split("?", 1)[0].split("#", 1)[0]
    kb_root = kb_dir.resolve()

    candidates = [
        kb_dir / PurePosixPath(doc_path).parent / clean,
        kb_dir / clean.lstrip("/"),
    ]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_file() and resolved.is_relative_to(kb_root):
            return resolved.relative_to(kb_root).as_posix()

    same_name = by_name.get(PurePosixPath(clean).name.lower(), [])
    if same_name:
        return sorted(same_name)[0].resolve().relative_to(kb_root).as_posix()
    return None


def _embedding_text(section: Section) -> str:
    """Text embedded for a section: document title and heading path give context to short sections."""
    heading = " › ".join(dict.fromkeys([section.title, *section.heading_path]))
    return f"{heading}\n{section.text}"


def _section_metadata(section: Section) -> dict:
    return {
        "doc_path": section.doc_path,
        "title": section.title,
        "heading_path": json.dumps(section.heading_path),
        "start": section.start,
        "end": section.end,
        "doc_hash": section.doc_hash,
        "image_refs": json.dumps(section.image_refs),
    }


def _section_from_record(section_id: str, text: str, metadata: dict) -> Section:
    return Section(
        id=section_id,
        doc_path=metadata["doc_path"],
        title=metadata["title"],
        heading_path=json.loads(metadata["heading_path"]),
        text=text,
        start=int(metadata["start"]),
        end=int(metadata["end"]),
        doc_hash=metadata["doc_hash"],
        image_refs=json.loads(metadata.get("image_refs") or "[]"),
    )
