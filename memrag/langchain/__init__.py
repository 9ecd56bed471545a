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
    "DocumentSource": "memrag.langchain.sources",
    "DocumentNotFoundError": "memrag.langchain.sources",
    "InMemoryDocumentSource": "memrag.langchain.sources",
    "DocumentReference": "memrag.langchain.markers",
    "MarkerCodec": "memrag.langchain.markers",
    "DOCUMENT_BLOCK_TYPE": "memrag.langchain.markers",
    "REFERENCE_KEY_ENV": "memrag.langchain.markers",
    "document_block": "memrag.langchain.markers",
    "document_marker": "memrag.langchain.markers",
    "escape_markers": "memrag.langchain.markers",
    "unescape_markers": "memrag.langchain.markers",
    "split_markers": "memrag.langchain.markers",
    "format_docs": "memrag.langchain.formatting",
    "prepare_question": "memrag.langchain.formatting",
    "DEFAULT_DOCUMENT_TEMPLATE": "memrag.langchain.formatting",
    "DEFAULT_QA_TEMPLATE": "memrag.langchain.formatting",
    "TEXT_DOCUMENT_TEMPLATE": "memrag.langchain.formatting",
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
