"""The index stage and retrieval: a ChromaDB collection of the training split.

Modules: ``index`` (``IndexConfig``, ``run``, ``Index`` for queries, ``main``), ``embed``
(MiniLM and the deterministic hash embedder for tests).
"""

from catalogtune.rag.embed import HashEmbedder, MiniLMEmbedder, get_embedder
from catalogtune.rag.index import Index, IndexConfig, IndexResult, run

__all__ = ["HashEmbedder", "Index", "IndexConfig", "IndexResult", "MiniLMEmbedder", "get_embedder", "run"]
