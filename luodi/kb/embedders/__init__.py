"""Embedder implementations, one per module; pick one with `luodi.kb.embedding.get_embedder`."""
