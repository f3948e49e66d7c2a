"""The example event of the public spec (Event Format section), used as a fixture everywhere."""

from __future__ import annotations

from typing import Any

SPEC_EXAMPLE: dict[str, Any] = {
    "event_id": "evt_a1b2c3d4e5f6",
    "timestamp": "2026-03-15T08:42:17.003Z",
    "tenant_id": "tnt_7g8h9i0j",
    "actor": {"type": "user", "id": "usr_k1l2m3n4", "email": "[email protected]"},
    "action": "certificate.issue",
    "resource": {"type": "certificate", "id": "crt_o5p6q7r8", "name": "api.example.com"},
    "outcome": "success",
    "metadata": {"ca_id": "ca_s9t0u1v2", "algorithm": "ECDSA-P384", "validity_days": 365},
    "source_ip": "203.0.113.42",
}

# The eight event categories of the spec's "What Is Exported" table, as action prefixes.
SPEC_CATEGORIES = frozenset(
    {
        "authentication",
        "machine_account",
        "certificate",
        "pki",
        "discovery",
        "deployment",
        "admin",
        "security",
    }
)
