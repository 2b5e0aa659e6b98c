"""Clean: text cleaning (data.clean) and token-length filtering of training rows (data.length_filter).

Cleaning is a fixed sequence of optional steps, always applied in this order whatever order the
config lists them in:

    html         HTML entities unescaped, including AG News's broken ones whose `&` was lost
                 (`#39;` -> ', `quot;` -> ", `&lt;b&gt;` -> <b>), repeatedly for double escapes
    tags         HTML tags removed (<b>, <a href=...>, </font>)
    urls         http(s)://... and www.... removed
    escapes      backslash escapes: `\\$` -> $, other runs of backslashes (lost line breaks) -> space
    punctuation  punctuation removed (as some reports did; off in `standard`)
    stopwords    NLTK English stopwords removed (needs NLTK's stopwords data)
    lowercase    lower-cased
    whitespace   runs of whitespace collapsed, ends stripped

`standard` = html, tags, urls, escapes, whitespace. The cleaning is part of the data config, so
it is stored in a run's config.yaml and `data.read_table` applies it to every text that enters
training, evaluation, prediction or serving: it cannot be forgotten on one path.

The regular expressions are hand-written because they target AG News's particular damage (the
stdlib `html.unescape` does the entity decoding itself).
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

CLEAN_STEPS = ("html", "tags", "urls", "escapes", "punctuation", "stopwords", "lowercase", "whitespace")
PRESETS = {"standard": ("html", "tags", "urls", "escapes", "whitespace"), "none": ()}

# an entity whose "&" was stripped: "#39;", "quot;", "nbsp;" not already preceded by "&"
_BROKEN_ENTITY = re.compile(r"(?<![&\w])(?<!&amp;)(#\d{1,6}|#x[0-9a-fA-F]{1,6}|quot|amp|lt|gt|nbsp|apos|hellip|mdash|ndash);")
# the lost "&" became a space: "nation #39;s" was "nation&#39;s", "said, quot; He" was "said,&quot; He"
_SPACED_APOSTROPHE = re.compile(r"\s(#39|#146|#8217);(?=(?:s|t|d|m|ll|re|ve)\b)")
_SPACED_CLOSING = re.compile(r"\s(quot|#39|#148|#8221);(?=\s|[.,;:!?)]|$)")
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_ESCAPED_SYMBOL = re.compile(r"\\+(?=[$#%&_{}\"'])")
_BACKSLASHES = re.compile(r"\\+")
_PUNCTUATION = re.compile(r"[^\w\s]|_")
_SPACES = re.compile(r"\s+")

NLTK_HINT = ("run `python -m nltk.downloader stopwords wordnet` (or set NLTK_DATA to a folder holding "
             "corpora/stopwords and corpora/wordnet)")


def nltk_corpus(name: str):
    """An NLTK corpus (`stopwords`, `wordnet`), loaded the standard way (NLTK_DATA, ~/nltk_data, ...)."""
    try:
        import nltk
        from nltk.corpus import stopwords, wordnet
    except ImportError:
        raise UserError(f"NLTK is not installed; `pip install nltk`, then {NLTK_HINT}") from None
    # NLTK reads NLTK_DATA once at import; a value set later (a notebook, a test) is honoured too
    for folder in reversed(os.environ.get("NLTK_DATA", "").split(os.pathsep)):
        if folder and folder not in nltk.data.path:
            nltk.data.path.insert(0, folder)
    corpus = {"stopwords": stopwords, "wordnet": wordnet}[name]
    try:
        corpus.ensure_loaded()
    except LookupError:
        raise UserError(f"NLTK data {name!r} not found; {NLTK_HINT}") from None
    return corpus


_STOPWORDS: frozenset | None = None


def english_stopwords() -> frozenset:
    global _STOPWORDS
    if _STOPWORDS is None:
        _STOPWORDS = frozenset(nltk_corpus("stopwords").words("english"))
    return _STOPWORDS


# ---------------------------------------------------------------- the steps


def unescape_html(text: str) -> str:
    text = _SPACED_CLOSING.sub(r"&\1;", _SPACED_APOSTROPHE.sub(r"&\1;", text))
    text = _BROKEN_ENTITY.sub(r"&\1;", text)
    for _ in range(3):  # "&amp;lt;" -> "&lt;" -> "<"
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    return text.replace("\xa0", " ")


def remove_tags(text: str) -> str:
    return _TAG.sub(" ", text)


def remove_urls(text: str) -> str:
    return _URL.sub(" ", text)


def remove_escapes(text: str) -> str:
    return _BACKSLASHES.sub(" ", _ESCAPED_SYMBOL.sub("", text))


def remove_punctuation(text: str) -> str:
    return _PUNCTUATION.sub("", text)


def remove_stopwords(text: str) -> str:
    stop = english_stopwords()
    return " ".join(w for w in text.split() if w.lower() not in stop)


def collapse_whitespace(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


_FUNCTIONS = {
    "html": unescape_html,
    "tags": remove_tags,
    "urls": remove_urls,
    "escapes": remove_escapes,
    "punctuation": remove_punctuation,
    "stopwords": remove_stopwords,
    "lowercase": str.lower,
    "whitespace": collapse_whitespace,
}


def resolve_steps(names) -> tuple[str, ...]:
    """Config value (list of step names and presets, or None) -> the steps in canonical order."""
    wanted = set()
    for name in names or ():
        if name in PRESETS:
            wanted.update(PRESETS[name])
        elif name in CLEAN_STEPS:
            wanted.add(name)
        else:
            raise UserError(
                f"data.clean: unknown step {name!r}; choose from {', '.join(PRESETS)}, {', '.join(CLEAN_STEPS)}"
            )
    return tuple(s for s in CLEAN_STEPS if s in wanted)


@dataclass(frozen=True)
class Cleaner:
    """The cleaning of one config: call it on a text, or `.apply` it to a list."""

    steps: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, data_cfg) -> "Cleaner":
        return cls(resolve_steps(getattr(data_cfg, "clean", None)))

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = _FUNCTIONS[step](text)
        return text

    def apply(self, texts: list[str]) -> list[str]:
        if not self.steps:
            return list(texts)
        if "stopwords" in self.steps:
            english_stopwords()  # a missing corpus fails once, before any row
        return [self(t) for t in texts]


# ---------------------------------------------------------------- length filtering


def length_bounds(lengths: np.ndarray, percentiles) -> tuple[float, float]:
    low, high = percentiles
    return float(np.percentile(lengths, low)), float(np.percentile(lengths, high))


def length_filter(lengths: np.ndarray, percentiles) -> np.ndarray:
    """Boolean mask: rows whose length lies within the [low, high] percentiles of `lengths`."""
    lo, hi = length_bounds(lengths, percentiles)
    return (lengths >= lo) & (lengths <= hi)
