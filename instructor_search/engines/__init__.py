"""Engines a build can embed on besides its own process (``build(..., engine=...)``).

:mod:`.ray_engine`: Ray Data on a local instance or a cluster (``pip install 'instructor-search[distributed]'``).
"""
