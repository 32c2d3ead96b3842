"""Visual product search: CLIP embeddings + Qdrant vector search."""

__version__ = "0.1.0"
