"""The REST API of the audit events: ``siem-export serve``.

Customers pull their tenant's events with a machine account token: filters, keyset pages
with signed cursors, an ingestion-order mode for pollers and NDJSON streams. Modules:
``app`` (routes and the request steps), ``auth`` and ``auth_events`` (tokens, scopes, the
audit trail of authentications), ``params`` (query parameters), ``cursor``, ``ratelimit``,
``stream`` (NDJSON), ``problems`` (RFC 9457), ``server`` (the process), ``config`` (the ``api``
settings). ``openapi.json`` is the published contract. Import ``make_app`` from ``app``; this
package's import stays light because ``connectors.settings`` imports ``config`` from it.
"""
