"""The offline job that compresses a corpus into a memory store, locally or on Ray."""

from memrag.indexing.corpus import CorpusReader, CorpusReport, Document, count_documents
from memrag.indexing.job import BuildOptions, BuildReport, LocalExecutor, build_index

__all__ = [
    "BuildOptions",
    "BuildReport",
    "CorpusReader",
    "CorpusReport",
    "Document",
    "LocalExecutor",
    "build_index",
    "count_documents",
]
