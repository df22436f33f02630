"""Knowledge base: private documents → chunks with their place → hybrid retrieval → cited answers.

Layout: `ingest/` (one loader per format, and the pipeline that puts files into a store),
`chunking`, `terms` (the words BM25 matches on: jieba-segmented, traditional folded to
simplified), `embedding` (the Embedder protocol and its offline implementations), `store/` (the
Store protocol; SQLite and PostgreSQL), `retrieval` (BM25 + vector, reciprocal-rank fusion),
`answer` (the cited-answer prompt and sources).
"""
