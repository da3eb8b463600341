"""How an answer is scored: exact match and token F1 after SQuAD's normalisation.

Normalising first (lowercase, no punctuation, no articles, single spaces) means "the Quimbra."
and "quimbra" are the same answer; F1 gives partial credit for "Doravex" against "Doravex Labs".
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, then the articles a/an/the, and collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def token_f1(prediction: str, gold: str) -> float:
    """The harmonic mean of the precision and recall of the normalised answers' words,
    counted with multiplicity; 0 when they share no word (or either is empty)."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    shared = sum((Counter(predicted) & Counter(wanted)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(wanted)
    return 2 * precision * recall / (precision + recall)
