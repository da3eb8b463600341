"""BM25 search over the world's passages, with bm25s (Lucene's scoring, numpy only).

The index is built on the first search, once per environment instance, under a lock: the
AgentGym server steps episodes from a thread pool.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s


@dataclass(frozen=True)
class Passage:
    """One document: an entity's name as the title, and the text stating its facts."""

    title: str
    text: str


def terms(texts: list[str]) -> list[list[str]]:
    """bm25s's tokenisation: lowercase words of two or more characters, English stop words
    dropped (so "Tessik's" is "tessik", and a question's "what", "the", "in" weigh nothing)."""
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class Retriever:
    """The top-k passages for a query, best first; a passage sharing no term with the query is
    never returned, so a query of unknown words finds nothing."""

    def __init__(self, passages: Sequence[Passage]):
        self.passages = list(passages)
        self._index: bm25s.BM25 | None = None
        self._lock = threading.Lock()

    def _built(self) -> bm25s.BM25:
        with self._lock:
            if self._index is None:
                # The title is indexed with the text: a passage is found by its entity's name.
                documents = terms([f"{p.title} {p.text}" for p in self.passages])
                index = bm25s.BM25()
                index.index(documents, show_progress=False)
                self._index = index
        return self._index

    def search(self, query: str, k: int) -> list[Passage]:
        query_terms = terms([query])
        if not query_terms[0]:
            return []
        k = min(k, len(self.passages))
        found = self._built().retrieve(query_terms, k=k, show_progress=False, n_threads=0)
        return [
            self.passages[int(doc)]
            for doc, score in zip(found.documents[0], found.scores[0], strict=True)
            if score > 0
        ]
