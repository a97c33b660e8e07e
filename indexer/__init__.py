"""Turning a corpus into an index: readers, chunking, the build pipeline and the CLI.

Installed as ``instructor_search.indexer``.
"""
