"""The HTTP API: one warm :class:`~instructor_search.search.retriever.Retriever` behind FastAPI
(``instructor-index serve``), for applications in other processes and languages."""
