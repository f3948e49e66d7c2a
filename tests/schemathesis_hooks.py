"""schemathesis hooks of the API's positive run (``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks``).

A generated ``cursor`` is a random string, which the API can only refuse (400): with it in
nearly every case, the store would hardly ever be queried. The positive run drops it from the
cases the hook sees (all of the fuzzing phase's), so the generated filters, windows and page
sizes reach the store and its pages are checked against the document; the coverage phase
still sends some cases of its own with a cursor, refused as they should be. The full run
(negative data included) keeps every cursor.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if query:
        query.pop("cursor", None)
    return query
