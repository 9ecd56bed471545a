"""Document references in prompts: signed text markers, escaping, and content blocks.

A prompt names a stored document in one of two ways:

* a **text marker** ``<memrag:DOC_ID#SIGNATURE>``, made by :func:`document_marker` (and by
  :func:`~memrag.rag.formatting.format_docs`). The signature is an HMAC of the id under a
  secret *reference key*, so text a user types cannot forge a reference to a document they were
  never given: a marker whose signature does not verify is left in the prompt as plain text.
  The key is per process (random) unless ``MEMRAG_REFERENCE_KEY`` or an explicit ``key`` sets
  it; processes that format prompts for one another (or chat histories kept across restarts)
  must share it.
* a **content block** ``{"type": "memrag_document", "id": DOC_ID}`` in a message's content
  list, made by :func:`document_block`. Content blocks are structure, not text, so template
  variables can never produce one; build them only from ids your code chose.

:func:`escape_markers` is applied to user-supplied text (the RAG chain does it to the
question): it makes every marker-like sequence inert, even a validly signed marker copied from
elsewhere. The models undo the escaping on literal text, so the decoder reads exactly what the
user wrote.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

logger = logging.getLogger(__name__)

#: Environment variable holding a shared reference key (any string).
REFERENCE_KEY_ENV = "MEMRAG_REFERENCE_KEY"
#: ``type`` of a structured document-reference content block.
DOCUMENT_BLOCK_TYPE = "memrag_document"
#: What every text marker starts with.
MARKER_PREFIX = "<memrag:"

_SIGNATURE_HEX = 24  # 96 bits of HMAC-SHA256
_SIGNATURE_CONTEXT = b"memrag-document-reference\x00"
# An id is percent-encoded (only RFC 3986 unreserved characters stay), so it never contains
# ':', '#' or '>'; an escaped marker has ':' right after the prefix and can never match.
_MARKER = re.compile(r"<memrag:([A-Za-z0-9_.~%-]+)#([0-9a-f]{" + str(_SIGNATURE_HEX) + r"})>")
_ESCAPE = re.compile(r"<memrag:(:*)")
_UNESCAPE = re.compile(r"<memrag::(:*)")


@dataclass(frozen=True)
class DocumentReference:
    """A verified reference to one stored document, found in a prompt.

    Attributes:
        id: The referenced document's id.
    """

    id: str


#: A parsed piece of prompt text: literal text or a document reference.
Piece = str | DocumentReference


@functools.lru_cache(maxsize=1)
def _process_key() -> bytes:
    configured = os.environ.get(REFERENCE_KEY_ENV)
    if configured:
        return configured.encode("utf-8")
    return secrets.token_bytes(32)


def _key_bytes(key: str | bytes | Any | None) -> bytes:
    if key is None:
        return _process_key()
    if hasattr(key, "get_secret_value"):  # pydantic SecretStr / SecretBytes
        key = key.get_secret_value()
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not key:
        raise ValueError("a reference key must not be empty")
    return bytes(key)


class MarkerCodec:
    """Writes and reads signed document markers under one reference key.

    Args:
        key: The reference key (``str``, ``bytes`` or a pydantic secret). ``None`` uses the
            process key: ``MEMRAG_REFERENCE_KEY`` when set, else random bytes drawn once per
            process.
    """

    def __init__(self, key: str | bytes | Any | None = None) -> None:
        self._key = _key_bytes(key)

    def signature(self, doc_id: str) -> str:
        """The signature of ``doc_id`` under this codec's key."""
        mac = hmac.new(self._key, _SIGNATURE_CONTEXT + doc_id.encode("utf-8"), hashlib.sha256)
        return mac.hexdigest()[:_SIGNATURE_HEX]

    def marker(self, doc_id: str) -> str:
        """The text marker referencing ``doc_id``.

        Raises:
            ValueError: ``doc_id`` is empty or not a string.
        """
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"a document id must be a non-empty string, got {doc_id!r}")
        return f"{MARKER_PREFIX}{quote(doc_id, safe='')}#{self.signature(doc_id)}>"

    def split(self, text: str) -> list[Piece]:
        """Splits ``text`` into literal text and verified document references.

        Literal text is unescaped (see :func:`escape_markers`). A marker whose signature does
        not verify (forged, or signed under another key) stays literal text and is logged.
        """
        pieces: list[Piece] = []
        literal = ""
        position = 0
        for match in _MARKER.finditer(text):
            doc_id = unquote(match.group(1))
            if hmac.compare_digest(match.group(2), self.signature(doc_id)):
                literal += text[position : match.start()]
                if literal:
                    pieces.append(unescape_markers(literal))
                literal = ""
                pieces.append(DocumentReference(doc_id))
            else:
                logger.warning(
                    "ignoring a document marker for %r whose signature does not verify (forged, "
                    "or written under another reference key; see %s)",
                    doc_id,
                    REFERENCE_KEY_ENV,
                )
                literal += text[position : match.end()]
            position = match.end()
        literal += text[position:]
        if literal:
            pieces.append(unescape_markers(literal))
        return pieces


@functools.lru_cache(maxsize=16)
def _codec_for(key: bytes) -> MarkerCodec:
    return MarkerCodec(key)


def get_codec(key: str | bytes | Any | None = None) -> MarkerCodec:
    """The (cached) :class:`MarkerCodec` for ``key`` (``None``: the process key)."""
    return _codec_for(_key_bytes(key))


def document_marker(doc_id: str, *, key: str | bytes | Any | None = None) -> str:
    """The signed text marker referencing document ``doc_id``.

    Args:
        doc_id: The document's id in the model's document source.
        key: Reference key; ``None`` uses the process key (what the models use by default).
    """
    return get_codec(key).marker(doc_id)


def document_block(doc_id: str) -> dict[str, str]:
    """A structured content block referencing document ``doc_id`` in a message."""
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"a document id must be a non-empty string, got {doc_id!r}")
    return {"type": DOCUMENT_BLOCK_TYPE, "id": doc_id}


def escape_markers(text: str) -> str:
    """Makes every document marker in user-supplied ``text`` inert.

    Each ``<memrag:`` followed by ``n`` colons gains one colon; the models remove it again
    from literal text, so the decoder sees ``text`` unchanged, but nothing in it is read as a
    reference. Apply it to anything a user typed before it enters a prompt next to markers.
    """
    return _ESCAPE.sub(lambda m: "<memrag::" + m.group(1), text)


def unescape_markers(text: str) -> str:
    """Inverse of :func:`escape_markers` (applied by the models to literal prompt text)."""
    return _UNESCAPE.sub(lambda m: "<memrag:" + m.group(1), text)


def split_markers(text: str, *, key: str | bytes | Any | None = None) -> list[Piece]:
    """Splits ``text`` into literal text and verified references (see :meth:`MarkerCodec.split`)."""
    return get_codec(key).split(text)
