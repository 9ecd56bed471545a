"""LangChain integration: a vector store and retriever, models that splice stored memory
slots, markers, helpers.

Only ``langchain-core`` is needed. Names are imported lazily, so importing this package is
cheap::

    from memrag.langchain import ChatMemrag, MemragVectorStore, create_rag_chain, format_docs
"""

from __future__ import annotations

from memrag.utils.lazy import lazy_exports

_EXPORTS = {
    "ChatMemrag": "memrag.langchain.chat_models",
    "MemragLLM": "memrag.langchain.llms",
    "DocumentSource": "memrag.rag.sources",
    "DocumentNotFoundError": "memrag.rag.sources",
    "InMemoryDocumentSource": "memrag.rag.sources",
    "DocumentReference": "memrag.rag.markers",
    "MarkerCodec": "memrag.rag.markers",
    "DOCUMENT_BLOCK_TYPE": "memrag.rag.markers",
    "REFERENCE_KEY_ENV": "memrag.rag.markers",
    "document_block": "memrag.rag.markers",
    "document_marker": "memrag.rag.markers",
    "escape_markers": "memrag.rag.markers",
    "unescape_markers": "memrag.rag.markers",
    "split_markers": "memrag.rag.markers",
    "format_docs": "memrag.rag.formatting",
    "prepare_question": "memrag.rag.formatting",
    "DEFAULT_DOCUMENT_TEMPLATE": "memrag.rag.formatting",
    "DEFAULT_QA_TEMPLATE": "memrag.rag.formatting",
    "TEXT_DOCUMENT_TEMPLATE": "memrag.rag.formatting",
    "create_rag_chain": "memrag.langchain.chains",
    "default_rag_prompt": "memrag.langchain.chains",
    "default_model": "memrag.langchain.chains",
    "MemragVectorStore": "memrag.langchain.vectorstores",
    "MemragRetriever": "memrag.langchain.retrievers",
    "MemragEmbeddings": "memrag.langchain.embeddings",
    "LangChainEmbedder": "memrag.langchain.embeddings",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ())
