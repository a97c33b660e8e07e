"""``sqlite_utils``, imported without pandas.

sqlite-utils imports pandas whenever it is installed (Streamlit installs it) for one entry of
its column-type table, ``pandas.Timestamp``, which the index never stores. That import was half
a second of every process that opens an index: a one-off search at 100k chunks (import, open,
first query) took 1.9 s with it and 1.3 s without. Where pandas is already imported (the
search page), sqlite-utils gets it as before.
"""

from __future__ import annotations

import sys

if "sqlite_utils" not in sys.modules and "pandas" not in sys.modules:
    sys.modules["pandas"] = None  # type: ignore[assignment]  # meanwhile `import pandas` fails
    try:
        import sqlite_utils
    finally:
        if sys.modules.get("pandas", 0) is None:
            del sys.modules["pandas"]
else:
    import sqlite_utils

__all__ = ["sqlite_utils"]
