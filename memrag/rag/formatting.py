"""Rendering retrieved documents as slot references, and preparing user text for prompts."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from memrag.rag.markers import document_marker, escape_markers

#: How one document is rendered; the same wording as :func:`memrag.prompts.qa_parts`.
DEFAULT_DOCUMENT_TEMPLATE = "Passage: {reference}\n"
#: A document rendered as its text (classic text RAG through the same model and prompt).
TEXT_DOCUMENT_TEMPLATE = "Passage: {text}\n"
#: The question part of the QA prompt, after the documents (as :func:`memrag.prompts.qa_parts`).
DEFAULT_QA_TEMPLATE = "{context}Question: {question}\nAnswer:"


class _Fields(dict):
    def __missing__(self, key: str) -> Any:
        raise KeyError(
            f"document template field {{{key}}} is neither 'reference', 'id', 'text' nor a "
            "metadata key"
        )


def _template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def format_docs(
    docs: Sequence[Any],
    *,
    template: str = DEFAULT_DOCUMENT_TEMPLATE,
    separator: str = "",
    key: Any = None,
) -> str:
    """Renders documents as signed references to their stored slots.

    The memrag models replace each reference by the document's slots (or its text when the
    store flags it ``use_text``), so the prompt costs a few positions per document instead of
    its tokens. Use it where a text RAG chain would join ``page_content``::

        chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | ...

    Args:
        docs: Retrieved documents: LangChain ``Document``\\ s (or anything with ``id`` and
            ``metadata``) whose ``id`` is their id in the model's document source.
        template: Format of one document. ``{reference}`` is the marker; ``{id}``,
            ``{text}`` (the document's text: :data:`TEXT_DOCUMENT_TEMPLATE` renders documents
            as text, for classic text RAG) and the document's metadata keys may be used too
            (their values are escaped, so the model reads them as literal text).
        separator: Placed between rendered documents.
        key: Reference key; must match the model's ``reference_key`` (``None``: process key).

    Raises:
        ValueError: A document has no id (and the template uses ``{reference}`` or ``{id}``).
        KeyError: The template names a field the document does not have.
    """
    needs_id = bool(_template_fields(template) & {"reference", "id"})
    rendered = []
    for doc in docs:
        doc_id = getattr(doc, "id", None)
        text = str(getattr(doc, "page_content", ""))
        if needs_id and not doc_id:
            raise ValueError(
                "format_docs needs documents with an id (their id in the memrag document "
                f"source); got one without: {text[:80]!r}"
            )
        metadata: Mapping[str, Any] = getattr(doc, "metadata", None) or {}
        fields = _Fields({k: escape_markers(str(v)) for k, v in metadata.items()})
        fields["text"] = escape_markers(text)
        if doc_id:
            fields.update(id=escape_markers(doc_id), reference=document_marker(doc_id, key=key))
        rendered.append(string.Formatter().vformat(template, (), fields))
    return separator.join(rendered)


def prepare_question(question: str) -> str:
    """A user's question made safe for a prompt with references: stripped and escaped."""
    return escape_markers(question.strip())
