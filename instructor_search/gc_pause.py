"""``gc_paused``: Python's cyclic garbage collector held off while many long-lived objects are
made at once.

Each 700 allocations start a collection, and the older generations' collections walk every
tracked object of the process: with a model loaded (hundreds of thousands of objects), building
the catalog of 100,000 stored documents took 0.72 s with the collector and 0.25 s without it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (reference counting still frees)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
