"""The store's lexical index: SQLite FTS5 over the chunks' text, ranked by BM25.

The index lives in the store's database as an external-content FTS5 table over ``chunks``
(``chunks_lexical``, Porter stemming over Unicode words, diacritics folded), kept in step by
triggers on every insert, delete and text update of ``chunks``. So every add, delete,
compaction and repair updates it inside the same transaction as the chunk rows: a killed
writer leaves both as they were, and there is nothing else to keep consistent.

A store made before the lexical index existed gains it the first time it is opened for
writing (built from the chunks' text, without touching their memory); ``memrag index
verify`` reports an index that is missing or out of step and ``--repair`` rebuilds it.

Queries are bags of words: each word of the question (lower-cased, English stop words
dropped) is one OR-ed term, so a chunk needs no particular word to be found.
"""

from __future__ import annotations

import re

#: The FTS5 table over ``chunks.text`` (rowid = ``chunks.vid``).
LEXICAL_TABLE = "chunks_lexical"

#: Statements that create the lexical index and the triggers that keep it in step.
LEXICAL_SCHEMA = (
    f"CREATE VIRTUAL TABLE {LEXICAL_TABLE} USING fts5(text, content='chunks', "
    "content_rowid='vid', tokenize='porter unicode61 remove_diacritics 2')",
    f"CREATE TRIGGER chunks_lexical_insert AFTER INSERT ON chunks BEGIN "
    f"INSERT INTO {LEXICAL_TABLE}(rowid, text) VALUES (new.vid, new.text); END",
    f"CREATE TRIGGER chunks_lexical_delete AFTER DELETE ON chunks BEGIN "
    f"INSERT INTO {LEXICAL_TABLE}({LEXICAL_TABLE}, rowid, text) "
    "VALUES ('delete', old.vid, old.text); END",
    f"CREATE TRIGGER chunks_lexical_update AFTER UPDATE OF text ON chunks BEGIN "
    f"INSERT INTO {LEXICAL_TABLE}({LEXICAL_TABLE}, rowid, text) "
    "VALUES ('delete', old.vid, old.text); "
    f"INSERT INTO {LEXICAL_TABLE}(rowid, text) VALUES (new.vid, new.text); END",
)
#: The triggers that keep the index in step.
TRIGGERS = ("chunks_lexical_insert", "chunks_lexical_delete", "chunks_lexical_update")
#: Removes the index and its triggers (before re-making them).
DROP = (*(f"DROP TRIGGER IF EXISTS {name}" for name in TRIGGERS), f"DROP TABLE IF EXISTS {LEXICAL_TABLE}")
#: Rebuilds the index from the chunks' text.
REBUILD = f"INSERT INTO {LEXICAL_TABLE}({LEXICAL_TABLE}) VALUES ('rebuild')"
#: Checks the index against the chunks' text (raises ``sqlite3.DatabaseError`` when out of step).
INTEGRITY_CHECK = f"INSERT INTO {LEXICAL_TABLE}({LEXICAL_TABLE}, rank) VALUES ('integrity-check', 1)"

#: Words too common to say which chunk a question is about (a short English list: BM25's
#: IDF weighs them down anyway, dropping them keeps queries fast on big stores).
STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves""".split()
)

_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(text: str, max_terms: int = 64) -> list[str]:
    """The distinct words of ``text`` a lexical search looks for, in order of appearance."""
    words = (w.lower() for w in _WORD.findall(text))
    kept = dict.fromkeys(w for w in words if w not in STOP_WORDS)
    return list(kept)[:max_terms]


def match_expression(text: str) -> str | None:
    """An FTS5 ``MATCH`` expression OR-ing the words of ``text`` (``None``: no word to look for).

    Every term is quoted, so nothing in a user's text is read as FTS5 syntax.
    """
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
