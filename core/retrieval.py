"""Hybrid retrieval: dense vectors from Chroma and BM25 over the same sections, fused by reciprocal rank.

Example::

    retriever = HybridRetriever(knowledge_base=kb, embedder=embedder, settings=settings)
    hits = retriever.search("Why did sync pause?", context=["TP-4021 Storage quota exceeded"], k=5)
"""

from __future__ import annotations

import logging
import re
import threading

import numpy as np

from core.documents import IMAGE_CAPTION_PREFIX
from core.embeddings import TextEmbedder
from core.knowledge_base import KnowledgeBase
from core.settings import Settings
from core.types import RetrievedSection, Section

logger = logging.getLogger(__name__)

CANDIDATES_PER_RETRIEVER = 30
MAX_CONTEXT_CHARS = 1200
"""Screenshot or voice-note text beyond this is left out of the keyword query, so the question keeps its weight."""
DENSE_CONTEXT_CHARS = 400
"""Media text in the embedded query. MiniLM-L6 reads at most 256 tokens anyway, and bench_pipeline.py
measured about 4 ms per 100 characters of query on 2 cores; keyword search still sees MAX_CONTEXT_CHARS."""

STOPWORDS = frozenset("""
a about above after again all am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers him his
how i if in into is it its itself just me more most my no nor not now of off on once only or other our out over
own same she should so some such than that the their them then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your yours
""".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:[._'-][a-z0-9]+)*")
MIN_CODE_DIGITS = 3
_DIGIT_RUN = re.compile(r"\d{%d,}" % MIN_CODE_DIGITS)


def tokenize(text: str) -> list[str]:
    """Split text into lowercase word tokens for BM25, dropping stopwords and possessive endings.

    A token with a run of MIN_CODE_DIGITS or more digits also yields that run, so an error
    code matches however its prefix was written, spoken or misheard ("TP-4021", "tp4021").
    """
    tokens = []
    for token in _TOKEN.findall(text.lower()):
        token = token.removesuffix("'s")
        if token not in STOPWORDS and len(token) > 1:
            tokens.append(token)
            tokens.extend(run for run in _DIGIT_RUN.findall(token) if run != token)
    return tokens


def reciprocal_rank_fusion(rankings: list[list[str]], *, k: int) -> dict[str, float]:
    """Fuse ranked id lists: each id scores the sum of 1 / (k + rank) over the lists, rank from 1."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item_id in enumerate(ranking, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (k + rank)
    return scores


class HybridRetriever:
    """Finds knowledge-base sections for a question and the text read from the user's media."""

    def __init__(self, *, knowledge_base: KnowledgeBase, embedder: TextEmbedder, settings: Settings) -> None:
        self.knowledge_base = knowledge_base
        self.embedder = embedder
        self.settings = settings
        self._bm25 = None
        self._bm25_ids: list[str] = []
        self._bm25_version = -1
        self._lock = threading.Lock()

    def build_query(self, question: str, context: list[str], *, max_context_chars: int = MAX_CONTEXT_CHARS) -> str:
        """Combine the question with the text of the user's media, cut to ``max_context_chars``."""
        context_text = " ".join(" ".join(text.split()) for text in context if text and text.strip())
        return f"{question.strip()}\n{context_text[:max_context_chars]}".strip()

    def build_dense_query(self, question: str, context: list[str]) -> str:
        """Return the shorter query that is embedded for the dense search."""
        return self.build_query(question, context, max_context_chars=DENSE_CONTEXT_CHARS)

    def search(self, question: str, *, context: list[str] | None = None, k: int | None = None,
               query_vector: np.ndarray | None = None) -> list[RetrievedSection]:
        """Return the ``k`` best sections for the question and its context, best first.

        ``query_vector`` may carry the embedding of ``build_dense_query(question, context)``
        when the caller has it already.
        """
        k = k or self.settings.retrieval_top_k
        query = self.build_query(question, context or [])
        if not query:
            return []

        if query_vector is None:
            query_vector = self.embedder.embed([self.build_dense_query(question, context or [])])[0]
        dense = self.knowledge_base.query_dense(query_vector, k=CANDIDATES_PER_RETRIEVER)
        dense_ids = [section_id for section_id, _ in dense]
        similarity = dict(dense)
        keyword_ids = self._bm25_ranking(query, labels=False)[:CANDIDATES_PER_RETRIEVER]
        label_ids = self._bm25_ranking(query, labels=True)[:CANDIDATES_PER_RETRIEVER]

        fused = reciprocal_rank_fusion([dense_ids, keyword_ids, label_ids], k=self.settings.rrf_k)
        ranked = sorted(fused, key=fused.get, reverse=True)[:k]
        dense_rank = {section_id: rank for rank, section_id in enumerate(dense_ids, start=1)}
        keyword_rank = {section_id: rank for rank, section_id in enumerate(keyword_ids, start=1)}

        return [
            RetrievedSection(
                section=self.knowledge_base.get_section(section_id),
                score=fused[section_id],
                dense_rank=dense_rank.get(section_id),
                bm25_rank=keyword_rank.get(section_id),
                dense_similarity=similarity.get(section_id),
            )
            for section_id in ranked
        ]

    def _bm25_ranking(self, query: str, *, labels: bool) -> list[str]:
        """Return section ids with a positive BM25 score for the query, best first.

        With ``labels`` the index holds only each section's title, heading path and
        image captions: the words that name a screen or an error, which a screenshot
        often repeats verbatim.
        """
        index = self._bm25_indexes()[1 if labels else 0]
        tokens = tokenize(query)
        if index is None or not tokens:
            return []
        scores = index.get_scores(tokens)
        order = np.argsort(-scores)
        return [self._bm25_ids[position] for position in order if scores[position] > 0]

    def _bm25_indexes(self):
        with self._lock:
            if self._bm25_version != self.knowledge_base.version or self._bm25 is None:
                from rank_bm25 import BM25Okapi

                sections = self.knowledge_base.sections()
                self._bm25_ids = [section.id for section in sections]
                full = [tokenize(_keyword_text(section)) for section in sections]
                labels = [tokenize(_label_text(section)) for section in sections]
                self._bm25 = (BM25Okapi(full), BM25Okapi(labels)) if sections else (None, None)
                self._bm25_version = self.knowledge_base.version
            return self._bm25


def _keyword_text(section: Section) -> str:
    return f"{section.title} {' '.join(section.heading_path)} {section.text}"


def _label_text(section: Section) -> str:
    captions = [line[len(IMAGE_CAPTION_PREFIX):].rstrip("]") for line in section.text.split("\n")
                if line.startswith(IMAGE_CAPTION_PREFIX)]
    return f"{section.title} {' '.join(section.heading_path)} {' '.join(captions)}"
