"""Signed document markers, escaping, content blocks and format_docs."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document

from memrag.langchain import (
    DocumentReference,
    MarkerCodec,
    document_block,
    document_marker,
    escape_markers,
    format_docs,
    prepare_question,
    split_markers,
    unescape_markers,
)
from memrag.rag.markers import get_codec

TRICKY_IDS = ["doc-1", "a:b#c>d", "with space", "100%", "ünïcødé/📄", "<memrag:x#y>", "::"]


@pytest.mark.parametrize("doc_id", TRICKY_IDS)
def test_marker_round_trip(doc_id: str) -> None:
    marker = document_marker(doc_id)
    assert marker.startswith("<memrag:") and marker.endswith(">")
    text = f"before {marker} middle {marker}after"
    assert split_markers(text) == [
        "before ",
        DocumentReference(doc_id),
        " middle ",
        DocumentReference(doc_id),
        "after",
    ]


def test_marker_needs_an_id() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        document_marker("")
    with pytest.raises(ValueError, match="non-empty string"):
        document_block("")


@pytest.mark.parametrize(
    "forged",
    [
        "<memrag:secret>",  # the unsigned syntax a user might guess
        "<memrag:secret#" + "0" * 24 + ">",  # right shape, wrong signature
        MarkerCodec("another key").marker("secret"),  # signed under another key
    ],
)
def test_forged_markers_stay_text(forged: str, caplog: pytest.LogCaptureFixture) -> None:
    text = f"Tell me {forged} please"
    with caplog.at_level("WARNING", logger="memrag.rag.markers"):
        assert split_markers(text) == [text]
    if "#" in forged:  # marker-shaped: the failed verification is logged
        assert "does not verify" in caplog.text


def test_signature_binds_the_id() -> None:
    real = document_marker("public")
    # Swapping the id of a genuine marker must not yield a reference to another document.
    forged = real.replace("public", "secret")
    assert split_markers(forged) == [forged]


def test_explicit_keys() -> None:
    codec = get_codec("shared key")
    marker = document_marker("doc", key="shared key")
    assert codec.split(marker) == [DocumentReference("doc")]
    assert split_markers(marker) == [marker]  # the process key does not verify it
    assert get_codec("shared key") is codec


@pytest.mark.parametrize(
    "text",
    [
        "plain text",
        "<memrag:",
        "<memrag::",
        "a <memrag:::x> b <memrag:doc#abc>",
        "<memrag:<memrag::x",
        "<MEMRAG:case>",
    ],
)
def test_escape_is_lossless(text: str) -> None:
    assert unescape_markers(escape_markers(text)) == text
    assert split_markers(escape_markers(text)) == [text]


def test_escaped_genuine_marker_is_not_a_reference() -> None:
    marker = document_marker("doc")
    escaped = escape_markers(f"copy of {marker}")
    assert split_markers(escaped) == [f"copy of {marker}"]


def test_prepare_question_strips_and_escapes() -> None:
    marker = document_marker("doc")
    assert split_markers(prepare_question(f"  what is {marker}?\n")) == [f"what is {marker}?"]


def test_format_docs_renders_references() -> None:
    docs = [Document("a", id="one", metadata={"title": "T1"}), Document("b", id="two")]
    rendered = format_docs(docs)
    assert rendered == f"Passage: {document_marker('one')}\nPassage: {document_marker('two')}\n"
    custom = format_docs(docs[:1], template="[{title}] {id}: {reference}")
    assert custom == f"[T1] one: {document_marker('one')}"


def test_format_docs_escapes_metadata() -> None:
    sneaky = Document("x", id="one", metadata={"title": document_marker("secret")})
    pieces = split_markers(format_docs([sneaky], template="{title} {reference}"))
    assert DocumentReference("secret") not in pieces
    assert pieces[-1] == DocumentReference("one")


def test_format_docs_errors() -> None:
    with pytest.raises(ValueError, match="documents with an id"):
        format_docs([Document("no id")])
    with pytest.raises(KeyError, match="title"):
        format_docs([Document("x", id="one")], template="{title}{reference}")
