"""The citation check: every ``[n]`` must name evidence that supports its sentence, whatever engine wrote it.

The verifier splits an answer into sentences and the ``[n]`` markers after them,
and scores each sentence against the evidence of the citations it names:

- overlap: the share of the sentence's content words (stopwords dropped, light
  stemming) found in one evidence sentence or two adjacent ones;
- similarity: the embedding cosine to the best of those evidence sentences.

A sentence's score is the mean of overlap and similarity. It is supported when
overlap reaches ``citation_min_overlap``, similarity ``citation_min_similarity``
and the score ``citation_min_score``. A
verbatim quote of the evidence (compared without case, punctuation or line
breaks) is supported with score 1 and needs no embedding. For text in curly
quotes (``“…”``), only the quoted words are checked, because the words around
them are the engine's framing ("Your screenshot shows").

Rules, applied in this order:

1. A marker whose citation supports the sentence stays (``verified``).
2. A marker that fails, or names a number with no citation, is rewritten to the
   citation that supports the sentence best (``repaired``).
3. A sentence without any marker gets the marker of a citation that supports it
   (``added``).
4. A sentence whose markers all failed, with no other citation to support it, keeps
   its text behind the mark ``⚠ unsupported:`` and loses its markers (``unsupported``).
   The engine claimed a source, so the reader sees the claim and that it failed.
5. A sentence without a marker and without support is left out (``removed``),
   because nothing backs it. Lead-ins that end with a colon and the notices in
   ENGINE_NOTICE_PREFIXES are kept unchecked.

Citations that no marker names any more are dropped, and the rest are renumbered
1, 2, 3 in order of first use.

The answer's grounding score is its support times its relevance, and 0 for an
answer that says the knowledge base does not cover the question. Support is the
mean of the sentence scores weighted by content words, with removed sentences
counted. Relevance, computed only when the question is given, is the maximum
embedding cosine between the question and the sentences that cite a knowledge-base
section, scaled from ``grounding_relevance_floor`` (0) to ``grounding_relevance_full``
(1). A verbatim quote is fully supported whatever it answers, so without relevance
an answer that quotes the wrong page correctly would score 1.

Example::

    verifier = CitationVerifier(embedder=embedder, settings=settings)
    verifier.verify_answer(answer)          # rewrites answer.text and answer.citations in place
    print(answer.grounding, [s.supported for s in answer.sentences])
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from core.embeddings import TextEmbedder
from core.retrieval import tokenize
from core.settings import Settings
from core.types import Answer, Citation, SentenceGrounding

logger = logging.getLogger(__name__)

UNSUPPORTED_MARK = "⚠ unsupported:"
NO_SUPPORTED_TEXT = "Sightline could not match any sentence of this answer to its sources, so it shows none of them."
ENGINE_NOTICE_PREFIXES = (
    "the knowledge base does not cover",
    "sightline could not match",
)
"""Sentences that engines write about themselves, kept without a marker and without a check (lower case)."""

TEXT_EVIDENCE_KINDS = frozenset({"ocr_line", "kb_section", "transcript"})
"""Evidence whose text is what the answer quotes or restates. Other kinds (``kb_image``,
``image_label``) record a match or a label, and a marker for them is checked by naming."""
EVIDENCE_UNITS_EMBEDDED = 4
"""Evidence sentences per citation, ranked by word overlap, that are embedded for one check."""
REPAIR_CANDIDATES = 3
"""Other citations, ranked by word overlap, that a failed sentence is embedded against at most."""
VECTOR_CACHE_SIZE = 4096
"""Embeddings of evidence sentences kept in memory by text, so a follow-up answer embeds little."""

_MARKER_GROUP = re.compile(r"\[\d+(?:\s*,\s*\d+)*\](?:[ \t]*\[\d+(?:\s*,\s*\d+)*\])*")
_NUMBER = re.compile(r"\d+")
_QUOTED = re.compile(r"“([^”]*)”")
_LIST_PREFIX = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9“\"(⚠])")
_EVIDENCE_BREAK = re.compile(r"\n+|(?<=[.!?])\s+(?=[A-Z0-9“\"(])")
_NON_WORD = re.compile(r"[^a-z0-9]+")
_QUOTE_OPEN = "“"


@dataclass
class _Piece:
    """A run of answer text and the marker group after it, if any."""

    text: str
    numbers: list[int] | None = None
    """Citation numbers of the marker group that ends this piece; None when no marker follows."""
    ends_line: bool = False
    next_marked: _Piece | None = None
    """For a piece without markers: the next piece in the same line that ends with a marker group."""
    shares_next_marker: bool = False
    """True when the next marker group supports this piece too, so the piece needs no marker of its own."""
    check_text: str = ""
    tokens: set[str] = field(default_factory=set)
    grounding: SentenceGrounding | None = None


@dataclass
class _Support:
    """Support of one sentence by the evidence of one citation."""

    overlap: float
    similarity: float
    evidence_text: str

    @property
    def score(self) -> float:
        return 0.5 * self.overlap + 0.5 * self.similarity


@dataclass
class VerifiedAnswer:
    """An answer text after the check, with the citations it still names and the sentence verdicts."""

    text: str
    citations: list[Citation]
    sentences: list[SentenceGrounding]
    grounding: float
    support: float = 0.0
    """Mean sentence score weighted by content words."""
    relevance: float | None = None
    """Scaled cosine between the question and the cited knowledge-base sentences; None without a question."""

    @property
    def changed(self) -> bool:
        return any(sentence.status != "verified" for sentence in self.sentences)


class CitationVerifier:
    """Checks, repairs and scores the ``[n]`` markers of an answer against the cited evidence."""

    def __init__(self, *, embedder: TextEmbedder, settings: Settings) -> None:
        self.embedder = embedder
        self.min_overlap = settings.citation_min_overlap
        self.min_similarity = settings.citation_min_similarity
        self.min_score = settings.citation_min_score
        self.relevance_floor = settings.grounding_relevance_floor
        self.relevance_full = settings.grounding_relevance_full
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def verify_answer(self, answer: Answer, *, question: str | None = None) -> Answer:
        """Check ``answer`` in place: rewrite its text and citations, set grounding and sentences, add warnings.

        Pass the ``question`` so that the grounding score counts relevance too (see the module docstring).
        """
        verified = self.verify(answer.text, answer.citations, question=question)
        answer.text = verified.text
        answer.citations = verified.citations
        answer.sentences = verified.sentences
        answer.grounding = verified.grounding if answer.covered else 0.0

        unsupported = sum(sentence.status == "unsupported" for sentence in verified.sentences)
        removed = sum(sentence.status == "removed" for sentence in verified.sentences)
        if unsupported:
            answer.warnings.append(f"{unsupported} sentence{'s' if unsupported != 1 else ''} of this answer "
                                   f"did not match the sources {'they cite' if unsupported != 1 else 'it cites'} "
                                   f"and {'are' if unsupported != 1 else 'is'} marked “{UNSUPPORTED_MARK}”.")
        if removed:
            answer.warnings.append(f"{removed} sentence{'s' if removed != 1 else ''} without any supporting "
                                   f"source {'were' if removed != 1 else 'was'} left out of this answer.")
        return answer

    def verify(self, answer_text: str, citations: list[Citation], *, question: str | None = None) -> VerifiedAnswer:
        """Check every marker of ``answer_text`` against ``citations`` and return the repaired text and verdicts.

        ``citations`` are not modified; the result contains renumbered copies. With
        ``question``, the grounding score includes relevance to it.
        """
        by_number = {citation.n: citation for citation in citations}
        pieces = _split_pieces(answer_text)

        checked = [piece for piece in pieces if _needs_check(piece)]
        _link_next_markers(pieces)
        for piece in checked:
            piece.check_text = _check_text(piece.text)
            piece.tokens = _stems(piece.check_text)

        supports = self._score_all(checked, by_number)
        for piece in checked:
            piece.grounding = self._judge(piece, supports[id(piece)], by_number)
        _unshare_changed_markers(checked)

        text, kept = _render(pieces, by_number)
        renumbered, text, sentences = _renumber(text, kept, pieces, by_number)
        if not any(sentence.supported for sentence in sentences) and checked:
            text = NO_SUPPORTED_TEXT
            renumbered = []
        support = _answer_grounding(checked)
        relevance = self._relevance(question, sentences, renumbered) if question else None
        grounding = support * relevance if relevance is not None else support

        logger.debug("Verified answer: sentences=%d statuses=%s support=%.3f relevance=%s", len(checked),
                     [sentence.status for sentence in sentences], support, relevance)
        return VerifiedAnswer(text=text, citations=renumbered, sentences=sentences, grounding=grounding,
                              support=support, relevance=relevance)

    def _relevance(self, question: str, sentences: list[SentenceGrounding], citations: list[Citation]) -> float:
        """Return how closely the supported sentences address the question, from 0 to 1.

        Sentences that cite a knowledge-base section count, or every supported sentence when none does.
        """
        kinds = {citation.n: citation.evidence.kind for citation in citations}
        supported = [sentence.text for sentence in sentences if sentence.supported]
        from_sections = [sentence.text for sentence in sentences if sentence.supported
                         and any(kinds.get(number) == "kb_section" for number in sentence.citations)]
        texts = from_sections or supported
        if not texts:
            return 0.0

        vectors = self._embed([question, *texts])
        cosine = max(float(vectors[text] @ vectors[question]) for text in texts)
        span = max(self.relevance_full - self.relevance_floor, 1e-6)
        return min(max((cosine - self.relevance_floor) / span, 0.0), 1.0)

    def _score_all(self, pieces: list[_Piece], by_number: dict[int, Citation]) -> dict[int, dict[int, _Support]]:
        """Score each piece against its own markers first, and against the other citations only if those fail.

        A piece's own markers are the ones after it, or for a piece without any, the
        next marker group in its line. A piece that quotes another citation verbatim,
        but not its own, is settled without embedding anything, because embedding is
        the slow step and a verbatim quote names its source.
        """
        supports: dict[int, dict[int, _Support]] = {id(piece): {} for piece in pieces}
        normalized = {number: _normalize(_evidence_text(citation)) for number, citation in by_number.items()}
        own = {id(piece): _own_numbers(piece, by_number) for piece in pieces}

        own_pairs, quoted_pairs = [], []
        for piece in pieces:
            quoted = [number for number in by_number if _quotes(piece, by_number[number], normalized[number])]
            if quoted and not set(quoted) & set(own[id(piece)]):
                quoted_pairs.extend((piece, number) for number in quoted)
            else:
                own_pairs.extend((piece, number) for number in own[id(piece)])
        self._score_pairs(own_pairs, by_number, normalized, supports, named=True)
        self._score_pairs(quoted_pairs, by_number, normalized, supports, named=False)

        failed = [piece for piece in pieces if not any(self._passes(support) for support in supports[id(piece)].values())]
        candidates = []
        for piece in failed:
            others = [number for number in by_number if number not in own[id(piece)]]
            candidates.extend((piece, number) for number in self._repair_candidates(piece, others, by_number))
        self._score_pairs(candidates, by_number, normalized, supports, named=False)
        return supports

    def _repair_candidates(self, piece: _Piece, numbers: list[int], by_number: dict[int, Citation]) -> list[int]:
        """Return the text citations, at most REPAIR_CANDIDATES, whose word overlap with the piece could pass."""
        if not piece.tokens:
            return []
        overlaps = []
        for number in numbers:
            if by_number[number].evidence.kind not in TEXT_EVIDENCE_KINDS:
                continue
            ranked = _rank_units(piece.tokens, _evidence_text(by_number[number]))
            if ranked and ranked[0][1] >= self.min_overlap:
                overlaps.append((ranked[0][1], number))
        overlaps.sort(reverse=True)
        return [number for _, number in overlaps[:REPAIR_CANDIDATES]]

    def _score_pairs(self, pairs: list[tuple[_Piece, int]], by_number: dict[int, Citation],
                     normalized: dict[int, str], supports: dict[int, dict[int, _Support]], *, named: bool) -> None:
        """Score (piece, citation number) pairs into ``supports``, with one embedding batch for all of them.

        A verbatim quote scores 1 without an embedding. Otherwise a citation is embedded
        only when its word overlap alone could pass. Image matches and labels are scored
        only where the piece names them, and are never a repair target.
        """
        pending: list[tuple[_Piece, int, list[tuple[str, float]]]] = []
        for piece, number in pairs:
            citation = by_number[number]
            if citation.evidence.kind not in TEXT_EVIDENCE_KINDS:
                if named:
                    supports[id(piece)][number] = _naming_support(piece, citation)
                continue

            if _quotes(piece, citation, normalized[number]):
                supports[id(piece)][number] = _Support(1.0, 1.0, _matching_unit(piece.check_text,
                                                                                _evidence_text(citation)))
                continue
            if not piece.tokens:
                continue

            ranked = _rank_units(piece.tokens, _evidence_text(citation))
            overlap = ranked[0][1] if ranked else 0.0
            if overlap >= self.min_overlap:
                pending.append((piece, number, ranked))
            elif named:
                # Below the overlap threshold the citation fails whatever its similarity, so the
                # score is left without the similarity half rather than paying for an embedding.
                supports[id(piece)][number] = _Support(overlap, 0.0, "")

        if not pending:
            return
        texts = {piece.check_text for piece, _, _ in pending}
        texts.update(unit for _, _, ranked in pending for unit, _ in ranked)
        vectors = self._embed(sorted(texts))

        for piece, number, ranked in pending:
            claim = vectors[piece.check_text]
            best = max(ranked, key=lambda pair: float(vectors[pair[0]] @ claim))
            similarity = max(0.0, float(vectors[best[0]] @ claim))
            overlap = max(recall for _, recall in ranked)
            supports[id(piece)][number] = _Support(overlap, similarity, best[0])

    def _judge(self, piece: _Piece, supports: dict[int, _Support], by_number: dict[int, Citation]) -> SentenceGrounding:
        """Decide which markers the piece keeps and whether it is supported."""
        passing = {number: support for number, support in supports.items() if self._passes(support)}
        best_number = max(passing, key=lambda number: passing[number].score, default=None)
        best_any = max(supports.values(), key=lambda support: support.score, default=None)
        display = _display_text(piece.text)

        if piece.numbers:
            kept = [number for number in dict.fromkeys(piece.numbers) if number in passing]
            if kept:
                score = max(passing[number].score for number in kept)
                return SentenceGrounding(display, kept, score, True, "verified", passing[kept[0]].evidence_text)
            if best_number is not None:
                support = passing[best_number]
                return SentenceGrounding(display, [best_number], support.score, True, "repaired",
                                         support.evidence_text)
            score = best_any.score if best_any else 0.0
            return SentenceGrounding(display, [], score, False, "unsupported")

        next_numbers = piece.next_marked.numbers if piece.next_marked is not None else []
        shared = [number for number in dict.fromkeys(next_numbers) if number in passing]
        if shared:
            # "First sentence. Second sentence. [1]": the marker covers both sentences before it.
            piece.shares_next_marker = True
            return SentenceGrounding(display, shared, passing[shared[0]].score, True, "verified",
                                     passing[shared[0]].evidence_text)
        if best_number is not None:
            support = passing[best_number]
            return SentenceGrounding(display, [best_number], support.score, True, "added", support.evidence_text)
        return SentenceGrounding(display, [], best_any.score if best_any else 0.0, False, "removed")

    def _passes(self, support: _Support) -> bool:
        return (support.overlap >= self.min_overlap and support.similarity >= self.min_similarity
                and support.score >= self.min_score)

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Embed texts, reusing cached vectors, and return them by text."""
        with self._lock:
            missing = [text for text in texts if text not in self._vectors]
        if missing:
            fresh = self.embedder.embed(missing)
            with self._lock:
                for text, vector in zip(missing, fresh):
                    self._vectors[text] = vector
                while len(self._vectors) > VECTOR_CACHE_SIZE:
                    self._vectors.popitem(last=False)
        with self._lock:
            found = {}
            for text in texts:
                vector = self._vectors.get(text)
                if vector is None:  # evicted by a parallel call between the two steps
                    vector = self.embedder.embed([text])[0]
                found[text] = vector
            return found


# Splitting the answer.


def _split_pieces(answer_text: str) -> list[_Piece]:
    """Split the answer into sentence pieces; a marker group ends the piece before it.

    Markers and sentence breaks inside curly quotes are ignored, because quoted
    screenshot or document text may contain both.
    """
    pieces: list[_Piece] = []
    lines = answer_text.split("\n")
    for line_index, line in enumerate(lines):
        start = 0
        line_pieces: list[_Piece] = []
        for match in _markers_outside_quotes(line):
            line_pieces.extend(_split_sentences(line[start:match.start()]))
            numbers = [int(number) for number in _NUMBER.findall(match.group(0))]
            if line_pieces and line_pieces[-1].numbers is None and line_pieces[-1].text.strip():
                line_pieces[-1].numbers = numbers
            else:
                line_pieces.append(_Piece(text="", numbers=numbers))
            start = match.end()
        line_pieces.extend(_split_sentences(line[start:]))
        if not line_pieces:
            line_pieces.append(_Piece(text=""))
        line_pieces[-1].ends_line = line_index < len(lines) - 1
        pieces.extend(line_pieces)
    return pieces


def _markers_outside_quotes(line: str) -> list[re.Match]:
    quoted = _quoted_spans(line)
    return [match for match in _MARKER_GROUP.finditer(line)
            if not any(start <= match.start() < end for start, end in quoted)]


def _quoted_spans(text: str) -> list[tuple[int, int]]:
    return [(match.start(), match.end()) for match in _QUOTED.finditer(text)]


def _split_sentences(text: str) -> list[_Piece]:
    """Split a run of text at sentence ends outside curly quotes, keeping every character."""
    if not text:
        return []
    quoted = _quoted_spans(text)
    cuts = [match.end() for match in _SENTENCE_BREAK.finditer(text)
            if not any(start < match.start() < end for start, end in quoted)]
    bounds = [0, *cuts, len(text)]
    return [_Piece(text=text[begin:end]) for begin, end in zip(bounds, bounds[1:]) if text[begin:end]]


def _quotes(piece: _Piece, citation: Citation, normalized_evidence: str) -> bool:
    """Return True when the piece's checked words occur verbatim in a text citation's evidence."""
    quote = _normalize(piece.check_text)
    return bool(quote) and citation.evidence.kind in TEXT_EVIDENCE_KINDS and quote in normalized_evidence


def _own_numbers(piece: _Piece, by_number: dict[int, Citation]) -> list[int]:
    """Return the existing citation numbers that a piece names, or that the next marker group of its line names."""
    numbers = piece.numbers or (piece.next_marked.numbers if piece.next_marked is not None else [])
    return [number for number in dict.fromkeys(numbers) if number in by_number]


def _link_next_markers(pieces: list[_Piece]) -> None:
    """Point each piece without markers at the next piece of its line that has a marker group."""
    following: _Piece | None = None
    for piece in reversed(pieces):
        if piece.ends_line:
            following = None
        if piece.numbers:
            following = piece
        else:
            piece.next_marked = following


def _unshare_changed_markers(pieces: list[_Piece]) -> None:
    """Give a piece its own marker when the marker group it shared no longer names its citation."""
    for piece in pieces:
        if not piece.shares_next_marker:
            continue
        following = piece.next_marked.grounding
        if following is None or not set(piece.grounding.citations) <= set(following.citations) \
                or following.status == "unsupported":
            piece.shares_next_marker = False
            piece.grounding.status = "added"


def _needs_check(piece: _Piece) -> bool:
    """Return True for a piece that makes a claim: it has a marker, or content words outside lead-ins and notices."""
    stripped = piece.text.strip()
    if piece.numbers:
        # NOTE: a marker group with no text before it on its line ("[1] Sentence.") names
        # nothing checkable, so it is dropped rather than moved to the sentence after it.
        return bool(stripped)
    if not tokenize(stripped) and not _QUOTED.search(stripped):
        return False
    if stripped.endswith(":") or UNSUPPORTED_MARK in stripped:
        return False
    lowered = _LIST_PREFIX.sub("", stripped).lower().lstrip("⚠ ")
    return not lowered.startswith(ENGINE_NOTICE_PREFIXES)


def _check_text(text: str) -> str:
    """Return the words a piece claims: the quoted words if it quotes, else the sentence without list prefix or markup."""
    quotes = [quote.strip() for quote in _QUOTED.findall(text) if quote.strip()]
    if quotes:
        return " ".join(quotes)
    stripped = _LIST_PREFIX.sub("", text.strip())
    if stripped.startswith(UNSUPPORTED_MARK):
        stripped = stripped[len(UNSUPPORTED_MARK):]
    return stripped.replace("**", "").replace("`", "").strip()


def _display_text(text: str) -> str:
    return " ".join(text.split())


# Scoring.


def _evidence_text(citation: Citation) -> str:
    """Return the text a citation can be checked against: its evidence, and the cited excerpt if that differs."""
    evidence_text = citation.evidence.text or ""
    if citation.text and _normalize(citation.text) not in _normalize(evidence_text):
        return f"{evidence_text}\n{citation.text}"
    return evidence_text


def _normalize(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def _stem(token: str) -> str:
    """Cut common English endings so that "resumes", "resumed" and "resume" match (a light Porter-like rule)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(token) > len(suffix) + 3 and token.endswith(suffix):
            return token[: -len(suffix)]
    return token


def _stems(text: str) -> set[str]:
    return {_stem(token) for token in tokenize(text)}


def _naming_support(piece: _Piece, citation: Citation) -> _Support:
    """Score a marker for an image match or label by how many words of what it names the sentence repeats.

    NOTE: the match itself (image similarity or label probability) is trusted as the
    vision stage reported it; only the sentence's description of it is checked.
    """
    evidence = citation.evidence
    if evidence.kind == "kb_image":
        names = " ".join(part for part in (evidence.document_title, evidence.heading) if part)
    else:
        names = evidence.text
    name_tokens = _stems(names)
    if not name_tokens:
        return _Support(0.0, 0.0, "")
    recall = len(name_tokens & piece.tokens) / len(name_tokens)
    return _Support(recall, recall, names)


def _evidence_units(evidence_text: str) -> list[str]:
    """Split evidence into sentences and lines, and add each pair of neighbours as one more unit."""
    units = [" ".join(unit.split()) for unit in _EVIDENCE_BREAK.split(evidence_text)]
    units = [unit for unit in units if unit]
    pairs = [f"{first} {second}" for first, second in zip(units, units[1:])]
    return units + pairs


def _rank_units(claim_tokens: set[str], evidence_text: str) -> list[tuple[str, float]]:
    """Return the evidence units with the highest recall of the claim's content words, best first."""
    scored = []
    for unit in _evidence_units(evidence_text):
        recall = len(claim_tokens & _stems(unit)) / len(claim_tokens)
        scored.append((unit, recall))
    scored.sort(key=lambda pair: (-pair[1], len(pair[0])))
    return scored[:EVIDENCE_UNITS_EMBEDDED]


def _matching_unit(check_text: str, evidence_text: str) -> str:
    """Return the evidence sentence that contains a verbatim quote, or the quote itself when it spans sentences."""
    normalized = _normalize(check_text)
    for unit in _evidence_units(evidence_text):
        if normalized in _normalize(unit):
            return unit
    return " ".join(check_text.split())


def _answer_grounding(checked: list[_Piece]) -> float:
    """Return the mean sentence score weighted by content words, or 0 when nothing was checked."""
    weights = [max(len(piece.tokens), 1) for piece in checked]
    if not checked:
        return 0.0
    total = sum(weight * piece.grounding.score for weight, piece in zip(weights, checked))
    return total / sum(weights)


# Rendering.


def _render(pieces: list[_Piece], by_number: dict[int, Citation]) -> tuple[str, list[int]]:
    """Write the pieces back with their verdicts applied; return the text and the numbers it names, in order."""
    parts: list[str] = []
    named: list[int] = []
    for piece in pieces:
        grounding = piece.grounding
        text = piece.text
        if grounding is None:
            parts.append(text)
        elif grounding.status == "removed":
            pass
        elif grounding.status == "unsupported":
            parts.append(_mark_unsupported(text))
        elif piece.shares_next_marker:
            parts.append(text)
        else:
            numbers = [number for number in grounding.citations if number in by_number]
            named.extend(numbers)
            markers = " ".join(f"[{number}]" for number in numbers)
            trailing = text[len(text.rstrip()):]
            parts.append(f"{text.rstrip()} {markers}{trailing}" if text.strip() else f"{text}{markers}")
        if piece.ends_line:
            parts.append("\n")
    return _tidy("".join(parts)), list(dict.fromkeys(named))


def _mark_unsupported(text: str) -> str:
    """Put the unsupported mark after the list prefix and before the quote or sentence."""
    stripped = text.rstrip()
    prefix = _LIST_PREFIX.match(stripped)
    head = prefix.group(0) if prefix else stripped[: len(stripped) - len(stripped.lstrip())]
    body = stripped[len(head):]
    if body.startswith(UNSUPPORTED_MARK):
        return stripped
    first_quote = body.find(_QUOTE_OPEN)
    if first_quote > 0:
        return f"{head}{body[:first_quote]}{UNSUPPORTED_MARK} {body[first_quote:]}"
    return f"{head}{UNSUPPORTED_MARK} {body}"


def _tidy(text: str) -> str:
    """Remove the spaces and empty lines that removed sentences and markers leave behind."""
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"[ \t]+([.,;:!?])(?=\s|$)", r"\1", line)
        line = re.sub(r"[ \t]{2,}", " ", line).rstrip()
        if re.fullmatch(r"\s*[.,;:!?]*\s*", line) and line.strip():
            continue
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _renumber(text: str, named: list[int], pieces: list[_Piece],
              by_number: dict[int, Citation]) -> tuple[list[Citation], str, list[SentenceGrounding]]:
    """Number the named citations 1, 2, 3 in order of first use and rewrite the markers and verdicts to match.

    The returned citations are copies, so the caller's objects stay unchanged.
    """
    new_by_old = {old: index + 1 for index, old in enumerate(named)}
    for piece in pieces:
        if piece.grounding is not None:
            piece.grounding.citations = [new_by_old[old] for old in piece.grounding.citations if old in new_by_old]

    quoted = _quoted_spans(text)
    rewritten, last = [], 0
    for match in _MARKER_GROUP.finditer(text):
        if any(start <= match.start() < end for start, end in quoted):
            continue
        numbers = [new_by_old[int(old)] for old in _NUMBER.findall(match.group(0)) if int(old) in new_by_old]
        rewritten.append(text[last:match.start()])
        rewritten.append(" ".join(f"[{number}]" for number in numbers))
        last = match.end()
    rewritten.append(text[last:])

    citations = [dataclasses.replace(by_number[old], n=new_by_old[old]) for old in named]
    sentences = [piece.grounding for piece in pieces if piece.grounding is not None]
    return citations, "".join(rewritten), sentences
