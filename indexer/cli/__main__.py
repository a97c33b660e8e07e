"""``python -m instructor_search.indexer.cli``: the same as ``instructor-index``."""

from . import main

main()
