"""Realistic synthetic audit events, for ``siem-export generate``, the demo, tests and benchmarks.

Tenants differ in size (a few large ones, a long tail of small ones); each has users with
e-mail addresses, machine accounts and the platform's own system actor. Actions cover all
eight categories with plausible weights, outcomes follow the action (a failed login is a
failure, a permission error is denied, other actions fail now and then), metadata fits the
action, and addresses come from the documentation ranges (RFC 5737, RFC 3849).

Everything is drawn from one ``random.Random(seed)``: the same seed and start time give the
same events, byte for byte.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# Weighted (action, resource type, share of failure, share of denied) by how often the
# platform emits them; authentication and API traffic dominate real audit streams.
ACTIONS: tuple[tuple[str, str, int, float, float], ...] = (
    ("authentication.login", "session", 120, 0.0, 0.0),
    ("authentication.login_failed", "session", 18, 1.0, 0.0),
    ("authentication.logout", "session", 60, 0.0, 0.0),
    ("authentication.sso_assertion", "session", 40, 0.04, 0.0),
    ("authentication.session_expired", "session", 25, 0.0, 0.0),
    ("authentication.mfa_challenge", "session", 30, 0.06, 0.0),
    ("machine_account.api_auth", "machine_account", 150, 0.03, 0.0),
    ("machine_account.token_exchange", "machine_account", 50, 0.05, 0.0),
    ("machine_account.ip_whitelist_enforced", "machine_account", 8, 0.0, 0.5),
    ("certificate.issue", "certificate", 45, 0.03, 0.01),
    ("certificate.renew", "certificate", 35, 0.03, 0.0),
    ("certificate.revoke", "certificate", 6, 0.02, 0.02),
    ("certificate.expire", "certificate", 8, 0.0, 0.0),
    ("certificate.download", "certificate", 30, 0.01, 0.02),
    ("pki.root_ca_create", "certificate_authority", 1, 0.05, 0.02),
    ("pki.intermediate_ca_create", "certificate_authority", 2, 0.05, 0.02),
    ("pki.policy_change", "policy", 3, 0.02, 0.03),
    ("pki.key_rotate", "key", 2, 0.03, 0.0),
    ("discovery.scan_start", "discovery_scan", 6, 0.0, 0.0),
    ("discovery.scan_complete", "discovery_scan", 6, 0.08, 0.0),
    ("discovery.certificate_found", "certificate", 20, 0.0, 0.0),
    ("discovery.inventory_change", "certificate_inventory", 5, 0.0, 0.0),
    ("deployment.install", "deployment_target", 15, 0.07, 0.0),
    ("deployment.bridge_job_dispatch", "bridge_job", 12, 0.02, 0.0),
    ("deployment.bridge_job_complete", "bridge_job", 12, 0.06, 0.0),
    ("admin.user_create", "user", 3, 0.02, 0.02),
    ("admin.user_deactivate", "user", 1, 0.01, 0.02),
    ("admin.role_assign", "role", 3, 0.01, 0.04),
    ("admin.group_member_add", "group", 3, 0.01, 0.03),
    ("admin.account_config_update", "account", 2, 0.02, 0.03),
    ("admin.siem_export_config_update", "siem_export", 1, 0.02, 0.05),
    ("security.permission_denied", "api_endpoint", 10, 0.0, 1.0),
    ("security.ip_whitelist_violation", "machine_account", 4, 0.0, 1.0),
    ("security.anomalous_access", "session", 1, 0.0, 0.3),
)

_DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
_DOC_DOMAINS = ("example.com", "example.org", "example.net")
_FIRST = (
    "ana",
    "ben",
    "chen",
    "dara",
    "emil",
    "fatima",
    "gus",
    "hana",
    "ivan",
    "jo",
    "kemi",
    "lars",
    "mia",
    "noor",
    "olu",
    "priya",
    "quinn",
    "ravi",
    "sofia",
    "tomas",
    "uma",
    "vik",
)
_LAST = (
    "adams",
    "baker",
    "costa",
    "diaz",
    "evans",
    "fischer",
    "garcia",
    "huang",
    "ito",
    "jensen",
    "khan",
    "lopez",
    "moreau",
    "nakamura",
    "okafor",
    "patel",
    "rossi",
    "silva",
)
_HOST_WORDS = ("api", "www", "login", "vpn", "mail", "pay", "shop", "edge", "db", "internal")
_ALGORITHMS = ("ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
SEEDED_START = datetime(2026, 3, 15, 8, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Tenant:
    """A synthetic customer: its id, domain, people and machine accounts."""

    tenant_id: str
    domain: str
    users: tuple[tuple[str, str], ...]
    machine_accounts: tuple[str, ...]
    ips: tuple[str, ...]


class EventFactory:
    """Draws realistic audit events for ``tenant_count`` tenants from one seeded generator."""

    def __init__(
        self, tenant_count: int, seed: int | None = None, start: datetime | None = None
    ) -> None:
        if tenant_count < 1:
            raise ValueError("tenant_count must be at least 1")
        self._rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
        self._deterministic = seed is not None or start is not None
        self._clock = start or (SEEDED_START if seed is not None else datetime.now(UTC))
        self.tenants = [self._tenant() for _ in range(tenant_count)]
        # A few large tenants and a long tail, as in any multi-tenant platform.
        self._tenant_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(tenant_count)]
        self._action_weights = [a[2] for a in ACTIONS]

    def _id(self, prefix: str, length: int = 8) -> str:
        return prefix + "".join(self._rng.choices(_ALPHABET, k=length))

    def _ip(self) -> str:
        net = self._rng.choices(_DOC_NETS, weights=(3, 3, 3, 1))[0]
        host = self._rng.randrange(1, min(net.num_addresses - 1, 2**32))
        return str(net.network_address + host)

    def _tenant(self) -> Tenant:
        rng = self._rng
        tenant_id = self._id("tnt_")
        domain = f"{rng.choice(('acme', 'globex', 'initech', 'umbrella', 'stark', 'wayne', 'hooli', 'vandelay'))}{rng.randrange(1, 999)}.{rng.choice(_DOC_DOMAINS)}"  # noqa: E501
        users = tuple(
            (self._id("usr_"), f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}@{domain}")
            for _ in range(rng.randint(3, 40))
        )
        machines = tuple(self._id("mac_") for _ in range(rng.randint(1, 8)))
        ips = tuple(self._ip() for _ in range(rng.randint(2, 12)))
        return Tenant(tenant_id, domain, users, machines, ips)

    def _timestamp(self) -> str:
        if self._deterministic:
            self._clock += timedelta(milliseconds=self._rng.randint(1, 250))
            now = self._clock
        else:
            now = datetime.now(UTC)
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"

    def _actor(self, tenant: Tenant, action: str) -> dict[str, Any]:
        rng = self._rng
        if action.startswith("machine_account.") or (
            action.startswith(("certificate.", "deployment.")) and rng.random() < 0.5
        ):
            return {
                "type": "machine_account",
                "id": rng.choice(tenant.machine_accounts),
                "email": None,
            }
        if action in (
            "certificate.expire",
            "discovery.certificate_found",
            "discovery.inventory_change",
            "authentication.session_expired",
        ):
            return {"type": "system", "id": "sys_platform", "email": None}
        user_id, email = rng.choice(tenant.users)
        return {"type": "user", "id": user_id, "email": email}

    def _resource(self, tenant: Tenant, action: str, rtype: str) -> dict[str, Any]:
        rng = self._rng
        prefix = {
            "certificate": "crt_",
            "certificate_authority": "ca_",
            "user": "usr_",
            "machine_account": "mac_",
            "session": "ses_",
            "bridge_job": "job_",
            "discovery_scan": "scn_",
            "deployment_target": "tgt_",
        }.get(rtype, "res_")
        name: str | None = None
        if rtype in ("certificate", "deployment_target"):
            name = f"{rng.choice(_HOST_WORDS)}.{tenant.domain}"
        elif rtype == "certificate_authority":
            name = f"{tenant.domain} {rng.choice(('Root', 'Issuing', 'Intermediate'))} CA"
        elif rtype == "user":
            name = rng.choice(tenant.users)[1]
        elif rtype == "api_endpoint":
            name = rng.choice(("GET /v1/certificates", "POST /v1/cas", "DELETE /v1/users/{id}"))
        return {"type": rtype, "id": self._id(prefix), "name": name}

    def _metadata(self, action: str, outcome: str) -> dict[str, Any]:
        rng = self._rng
        category = action.split(".", 1)[0]
        meta: dict[str, Any] = {}
        if category == "certificate":
            meta = {
                "ca_id": self._id("ca_"),
                "algorithm": rng.choice(_ALGORITHMS),
                "validity_days": rng.choice((30, 90, 180, 365, 397)),
                "serial": "".join(rng.choices("0123456789abcdef", k=32)),
            }
        elif category == "authentication":
            meta = {
                "method": rng.choice(("password", "saml", "oidc", "passkey")),
                "mfa": rng.random() < 0.7,
                "user_agent": rng.choice(
                    (
                        "Mozilla/5.0 (X11; Linux x86_64)",
                        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)",
                        "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
                    )
                ),
            }
        elif category == "machine_account":
            meta = {
                "client_id": self._id("cli_", 12),
                "scopes": rng.sample(
                    ["certificates:read", "certificates:write", "audit:read", "discovery:run"],
                    k=rng.randint(1, 3),
                ),
                "token_ttl_seconds": rng.choice((300, 900, 3600)),
            }
        elif category == "pki":
            meta = {
                "key_algorithm": rng.choice(_ALGORITHMS),
                "path_length": rng.randint(0, 2),
                "hsm_backed": rng.random() < 0.6,
            }
        elif category == "discovery":
            meta = {
                "scan_id": self._id("scn_"),
                "hosts_scanned": rng.randint(1, 5000),
                "certificates_found": rng.randint(0, 800),
                "duration_seconds": round(rng.uniform(0.5, 900.0), 3),
            }
        elif category == "deployment":
            meta = {
                "bridge_id": self._id("brg_"),
                "target_kind": rng.choice(("nginx", "f5", "iis", "k8s-secret", "aws-acm")),
                "duration_ms": rng.randint(40, 90_000),
            }
        elif category == "admin":
            meta = {
                "changes": {
                    "field": rng.choice(("role", "group", "status", "settings")),
                    "old": rng.choice(("viewer", "operator", None)),
                    "new": rng.choice(("admin", "operator", "viewer")),
                }
            }
        elif category == "security":
            meta = {
                "required_permission": rng.choice(("ca:create", "cert:revoke", "user:admin")),
                "rule": rng.choice(("ip-allowlist", "rbac", "geo-velocity")),
                "risk_score": round(rng.uniform(0, 1), 2),
            }
        if outcome != "success":
            meta["reason"] = rng.choice(
                (
                    "invalid_credentials",
                    "expired",
                    "policy_violation",
                    "not_authorized",
                    "upstream_timeout",
                    "quota_exceeded",
                )
            )
        return meta

    def event(self) -> dict[str, Any]:
        """One event of a tenant drawn by size, shaped exactly like the spec's example."""
        rng = self._rng
        tenant = rng.choices(self.tenants, weights=self._tenant_weights)[0]
        action, rtype, _, p_fail, p_denied = rng.choices(ACTIONS, weights=self._action_weights)[0]
        roll = rng.random()
        outcome = (
            "denied" if roll < p_denied else "failure" if roll < p_denied + p_fail else ("success")
        )
        return {
            "event_id": self._id("evt_", 12),
            "timestamp": self._timestamp(),
            "tenant_id": tenant.tenant_id,
            "actor": self._actor(tenant, action),
            "action": action,
            "resource": self._resource(tenant, action, rtype),
            "outcome": outcome,
            "metadata": self._metadata(action, outcome),
            "source_ip": rng.choice(tenant.ips) if rng.random() < 0.97 else None,
        }

    def events(self, count: int) -> Iterator[dict[str, Any]]:
        """``count`` events in order."""
        for _ in range(count):
            yield self.event()
