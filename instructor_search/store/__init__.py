"""The index on disk: ``index.sqlite`` (schema, migrations, writes, reads, filters) and the
files derived from it (``vectors.faiss``, ``keywords.bm25``)."""
