"""BM25 search over the world's passages, with bm25s (Lucene's scoring, numpy only).

The index is built on the first search, once per environment instance, under a lock: the
AgentGym server steps episodes from a thread pool.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Passage:
    """One document: an entity's name as the title, and the text stating its facts."""

    title: str
    text: str


def bm25s() -> ModuleType:
    """The bm25s package, imported on first use and without its optional numba backend.

    Imported at load, bm25s imports numba and llvmlite wherever they are installed (vLLM
    installs them), and vLLM's CPU engine then fails at start-up: it scans every loaded module
    and trips over llvmlite's foreign-function wrapper. Hiding numba while bm25s loads makes it
    take its numpy backend, which is the one it uses where numba is absent, so results do not
    depend on what else is installed."""
    if "bm25s" in sys.modules:
        return sys.modules["bm25s"]
    hide = "numba" not in sys.modules
    if hide:
        sys.modules["numba"] = None  # type: ignore[assignment]  # `import numba` fails
    try:
        import bm25s as package
    finally:
        if hide:
            del sys.modules["numba"]
    return package


def terms(texts: list[str]) -> list[list[str]]:
    """bm25s's tokenisation: lowercase words of two or more characters, English stop words
    dropped (so "Tessik's" is "tessik", and a question's "what", "the", "in" weigh nothing)."""
    return bm25s().tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class Retriever:
    """The top-k passages for a query, best first; a passage sharing no term with the query is
    never returned, so a query of unknown words finds nothing."""

    def __init__(self, passages: Sequence[Passage]):
        self.passages = list(passages)
        self._index: Any = None  # a bm25s.BM25, once built
        self._lock = threading.Lock()

    def _built(self) -> Any:
        with self._lock:
            if self._index is None:
                # The title is indexed with the text: a passage is found by its entity's name.
                documents = terms([f"{p.title} {p.text}" for p in self.passages])
                index = bm25s().BM25()
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
