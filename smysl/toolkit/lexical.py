"""Lexical search: how text becomes terms, BM25 scoring and rank fusion with vector search.

One analyser serves every store and every query, so a query term meets the stored one:
words are runs of letters, digits and combining marks of the case-folded NFKC text (``ё``
read as ``е``); Cyrillic and Latin words lose their combining marks (the stress marks of
``за́мок``, as Russian dictionaries and Wikipedia write them) and are reduced to their Snowball
Russian stem (``кошки``, ``кошкам`` -> ``кошк``) or English stem (``cats`` -> ``cat``);
everything else (numbers, mixed words such as ``covid19``, other scripts, marks and all) is
kept as it is. A query keeps its first :data:`MAX_QUERY_TERMS` distinct terms
(:func:`query_terms`). A store analyses
``payload["text"]`` when a record is written; :meth:`~smysl.toolkit.store.VectorStore.search_text`
takes the analysed query.

Hybrid search (:func:`fuse`) merges a vector ranking and a lexical ranking by reciprocal rank
fusion, ``sum 1 / (rrf_k + rank)``: it needs no calibration between a cosine and a BM25 score,
which live on unrelated scales.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Version of the analysis rules: an index records the version its terms were made with
#: (metadata key ``lexical``), and terms of another version would not meet the query's.
VERSION = 1
#: Longer "words" (base64, hashes, minified code) are not searchable terms.
MAX_TERM_CHARS = 64
#: Distinct terms a query keeps (a whole document pasted as a query): every store answers a
#: query of this many terms, PostgreSQL's statement grows with each.
MAX_QUERY_TERMS = 256
#: BM25 parameters (the usual Lucene/Elasticsearch defaults).
BM25_K1 = 1.2
BM25_B = 0.75
#: Reciprocal rank fusion constant (Cormack et al. 2009): larger flattens the top ranks.
RRF_K = 60

_WORD: re.Pattern[str] | None = None  # built on first use: the marks of the BMP, ~30 ms
_MARKS: re.Pattern[str] | None = None
_CYRILLIC = re.compile(r"[\u0400-\u04ff]+")
_LATIN = re.compile(r"[a-z\u00df-\u00f6\u00f8-\u00ff]+")
_local = threading.local()  # PyStemmer objects are not safe to share between threads


#: Words whose terms a thread remembers (word frequencies follow Zipf's law: most words of a
#: text were met before, and a dict lookup costs ~1/30 of stemming one).
CACHE_WORDS = 1 << 18


def _patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    global _WORD, _MARKS
    if _WORD is None or _MARKS is None:
        # \w leaves combining marks out (they are not alphanumeric): a word would break at a
        # stress mark or a Devanagari vowel sign
        marks = "".join(re.escape(chr(c)) for c in range(0x10000)
                        if unicodedata.category(chr(c)).startswith("M"))
        _MARKS = re.compile(f"[{marks}]+")
        _WORD = re.compile(f"[\\w{marks}]+")  # "_" is made a space first
    return _WORD, _MARKS


def _term(word: str) -> str:
    stemmers = getattr(_local, "stemmers", None)
    if stemmers is None:
        try:
            import Stemmer
        except ImportError as e:  # pragma: no cover - part of the toolkit extra
            raise ImportError("lexical search needs PyStemmer: pip install 'smysl[toolkit]' "
                              "(or pip install PyStemmer)") from e
        stemmers = _local.stemmers = (Stemmer.Stemmer("russian"), Stemmer.Stemmer("english"))
    bare = _patterns()[1].sub("", word)
    if _CYRILLIC.fullmatch(bare):
        return str(stemmers[0].stemWord(bare))
    if _LATIN.fullmatch(bare):
        return str(stemmers[1].stemWord(bare))
    return word


def analyze(text: str) -> list[str]:
    """The terms of ``text`` in order, repeats kept (see the module docstring for the rules)."""
    cache: dict[str, str] | None = getattr(_local, "cache", None)
    if cache is None or len(cache) > CACHE_WORDS:
        cache = _local.cache = {}
    words = _patterns()[0].findall(
        unicodedata.normalize("NFKC", text).casefold().replace("ё", "е").replace("_", " "))
    out = []
    for w in words:
        term = cache.get(w)
        if term is None:
            if len(w) > MAX_TERM_CHARS:
                continue
            term = cache[w] = _term(w)
        out.append(term)
    return out


def query_terms(text: str) -> list[str]:
    """What a query searches for: the distinct terms of ``text`` in order, the first
    :data:`MAX_QUERY_TERMS` of them (a repeated query term counts once in BM25 anyway)."""
    return list(dict.fromkeys(analyze(text)))[:MAX_QUERY_TERMS]


def record_terms(text: Any) -> list[str]:
    """A record's terms: those of its ``payload["text"]``, none for a record without text."""
    return analyze(text) if isinstance(text, str) else []


def terms_text(text: Any) -> str:
    """What a store indexes for one record, as one string: :func:`record_terms` joined by
    spaces (terms hold no spaces)."""
    return " ".join(record_terms(text))


@dataclass(frozen=True)
class Corpus:
    """Term statistics of a set of documents, for :func:`bm25`."""

    docs: int
    avg_length: float
    doc_freq: Mapping[str, int]


def corpus(term_lists: Sequence[Sequence[str]]) -> Corpus:
    freq: Counter[str] = Counter()
    for terms in term_lists:
        freq.update(set(terms))
    total = sum(len(t) for t in term_lists)
    return Corpus(len(term_lists), total / len(term_lists) if term_lists else 0.0, freq)


def tf_weight(tf: Any, length: Any, avg_length: float) -> Any:
    """BM25's term-frequency part: a term ``tf`` times in a document of ``length`` terms,
    documents ``avg_length`` terms long on average (numbers, or numpy arrays of them)."""
    norm = BM25_K1 * (1 - BM25_B + BM25_B * length / (avg_length or 1.0))
    return tf * (BM25_K1 + 1) / (tf + norm)


def idf(df: float, docs: float) -> float:
    """BM25's inverse document frequency (Lucene's, never negative): a term held by ``df`` of
    ``docs`` documents (an estimated ``df`` above ``docs`` counts as ``docs``)."""
    return math.log(1 + (max(docs, df) - df + 0.5) / (df + 0.5))


def bm25(query: Sequence[str], doc: Sequence[str], stats: Corpus) -> float:
    """Okapi BM25 of one document for one query (a repeated query term counts once)."""
    if not doc:
        return 0.0
    tf = Counter(doc)
    score = 0.0
    for term in set(query):
        f = tf.get(term, 0)
        if f:
            score += (idf(stats.doc_freq.get(term, 0), stats.docs)
                      * tf_weight(f, len(doc), stats.avg_length))
    return score


def fuse(rankings: Sequence[Sequence[str]], k: int, rrf_k: int = RRF_K,
         weights: Sequence[float] | None = None
         ) -> list[tuple[str, float, list[int | None]]]:
    """Reciprocal rank fusion of several rankings of ids (best first), ``sum w / (rrf_k +
    rank)`` with ranking ``i`` weighing ``weights[i]`` (1 each by default): the best ``k`` ids
    as ``(id, score, ranks)``, ``ranks[i]`` the 1-based rank in ranking ``i`` or None where it
    is absent. Ties keep the order of first appearance (the first ranking first)."""
    scores: dict[str, float] = {}
    ranks: dict[str, list[int | None]] = {}
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    for which, ranking in enumerate(rankings):
        for rank, i in enumerate(ranking, 1):
            if i not in ranks:
                ranks[i] = [None] * len(rankings)
                scores[i] = 0.0
            if ranks[i][which] is None:  # an id twice in one ranking counts at its best rank
                ranks[i][which] = rank
                scores[i] += weights[which] / (rrf_k + rank)
    order = sorted(scores, key=lambda i: -scores[i])  # stable: first appearance breaks ties
    return [(i, scores[i], ranks[i]) for i in order[:k]]
