"""Answering queries: the ``Retriever`` (dense, keyword, hybrid, filters, MMR), the ranking
math it calls, and the highlighted snippets the CLI and the page show."""
