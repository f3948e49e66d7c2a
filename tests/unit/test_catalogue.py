"""The action catalogue (schemas/actions.yaml) and its loader, streams.catalogue."""

from __future__ import annotations

import json
import re

import pytest

from streams import catalogue
from streams.catalogue import Severity, parse_catalogue, schemas_dir
from streams.errors import ConfigError
from tests.spec_example import SPEC_CATEGORIES

pytestmark = pytest.mark.unit


# Actions the spec's category table names (in the catalogue's wording).
SPEC_ACTIONS = [
    "authentication.login",
    "authentication.logout",
    "authentication.login_failed",
    "authentication.sso_assertion",
    "authentication.session_expired",
    "machine_account.api_auth",
    "machine_account.token_exchange",
    "machine_account.ip_whitelist_enforced",
    "certificate.issue",
    "certificate.renew",
    "certificate.revoke",
    "certificate.expire",
    "certificate.download",
    "pki.root_ca_create",
    "pki.intermediate_ca_create",
    "pki.policy_change",
    "pki.key_rotate",
    "discovery.scan_start",
    "discovery.scan_complete",
    "discovery.certificate_found",
    "discovery.inventory_change",
    "deployment.install",
    "deployment.bridge_job_dispatch",
    "deployment.bridge_job_complete",
    "admin.user_create",
    "admin.user_deactivate",
    "admin.role_assign",
    "admin.group_member_add",
    "admin.account_config_update",
    "admin.siem_export_config_update",
    "security.permission_denied",
    "security.ip_whitelist_violation",
    "security.anomalous_access",
]


def test_has_all_eight_categories_with_display_names() -> None:
    cats = catalogue.categories()
    assert {c.name for c in cats} == SPEC_CATEGORIES
    assert catalogue.category_names() == tuple(c.name for c in cats)
    for cat in cats:
        assert cat.display_name.strip() and cat.description.strip()
        assert cat.default_ocsf.class_uid > 0


def test_has_at_least_forty_actions_covering_every_category() -> None:
    actions = catalogue.load_catalogue().actions
    assert len(actions) >= 40
    assert {info.category for info in actions.values()} == SPEC_CATEGORIES


def test_every_action_prefix_is_its_category() -> None:
    for name, info in catalogue.load_catalogue().actions.items():
        prefix, _, verb = name.partition(".")
        assert info.action == name
        assert info.category == prefix, name
        assert info.verb == verb
        assert re.fullmatch(r"[a-z][a-z0-9_]*", verb), name
        assert catalogue.category_of(name) == prefix


@pytest.mark.parametrize("action", SPEC_ACTIONS)
def test_spec_actions_are_catalogued(action: str) -> None:
    info = catalogue.lookup(action)
    assert info is not None
    assert info.description.strip()
    assert re.fullmatch(r"[a-z][a-z0-9_]*", info.resource_type)


def test_ocsf_classes_are_consistent() -> None:
    names: dict[int, str] = {}
    for info in catalogue.load_catalogue().actions.values():
        assert 1000 <= info.ocsf.class_uid < 10000
        assert names.setdefault(info.ocsf.class_uid, info.ocsf.class_name) == info.ocsf.class_name
    assert names[3002] == "Authentication"
    assert names[3001] == "Account Change"
    assert names[6003] == "API Activity"


def test_lookup_and_category_of_unknown_actions() -> None:
    assert catalogue.lookup("certificate.teleport") is None
    assert catalogue.category_of("certificate.teleport") == "certificate"
    assert catalogue.category_of("nonsense.issue") is None
    assert catalogue.category_of("certificate") is None
    assert catalogue.lookup("") is None


def test_severity_of_success_is_the_catalogue_severity() -> None:
    assert catalogue.severity_for("certificate.issue") is Severity.INFORMATIONAL
    assert catalogue.severity_for("security.brute_force_detected") is Severity.ERROR
    assert catalogue.severity_for("security.key_compromise_reported") is Severity.CRITICAL


def test_failure_and_denied_raise_severity() -> None:
    # Global floors: failure -> notice, denied -> warning.
    assert catalogue.severity_for("certificate.issue", "failure") is Severity.NOTICE
    assert catalogue.severity_for("certificate.issue", "denied") is Severity.WARNING
    # Category floors tighten: authentication and pki failures are warnings.
    assert catalogue.severity_for("authentication.login", "failure") is Severity.WARNING
    assert catalogue.severity_for("pki.policy_change", "failure") is Severity.WARNING
    # A floor never lowers a severity that is already higher.
    assert catalogue.severity_for("security.brute_force_detected", "denied") is Severity.ERROR


def test_every_security_action_is_at_least_warning_when_denied_or_failed() -> None:
    for name in catalogue.load_catalogue().actions:
        if name.startswith("security."):
            for outcome in ("failure", "denied"):
                assert catalogue.severity_for(name, outcome) <= Severity.WARNING, name


def test_unlisted_action_falls_back_to_category_then_catalogue_default() -> None:
    assert catalogue.severity_for("security.new_detector") is Severity.WARNING
    assert catalogue.severity_for("admin.something_new") is Severity.NOTICE
    assert catalogue.severity_for("unknown.thing") is Severity.NOTICE
    assert catalogue.severity_for("unknown.thing", "denied") is Severity.WARNING
    ocsf = catalogue.ocsf_for("discovery.new_kind_of_scan")
    assert ocsf is not None and ocsf.class_uid == 6007
    assert catalogue.ocsf_for("unknown.thing") is None


def test_severity_labels_round_trip() -> None:
    for sev in Severity:
        assert Severity.from_label(sev.label) is sev
    assert Severity.INFORMATIONAL.label == "informational"
    with pytest.raises(ValueError, match="unknown severity"):
        Severity.from_label("loud")


def test_catalogue_is_loaded_once() -> None:
    assert catalogue.load_catalogue() is catalogue.load_catalogue()


def test_json_schema_action_pattern_lists_exactly_the_catalogue_categories() -> None:
    text = schemas_dir().joinpath("audit_event.schema.json").read_text(encoding="utf-8")
    pattern = json.loads(text)["properties"]["action"]["pattern"]
    m = re.match(r"\^\(([a-z_|]+)\)", pattern)
    assert m is not None
    assert set(m.group(1).split("|")) == SPEC_CATEGORIES


_MINIMAL = """
version: 1
defaults: {severity: notice, outcome_floor: {failure: notice, denied: warning}}
categories:
  pki:
    display_name: PKI
    description: d
    default_severity: notice
    default_ocsf: {class_uid: 3004, class_name: Entity Management}
actions:
  ACTION:
    category: CATEGORY
    severity: SEVERITY
    description: d
    ocsf: {class_uid: 3004, class_name: Entity Management}
    resource_type: key
"""


def _doc(action: str = "pki.key_rotate", category: str = "pki", severity: str = "notice") -> str:
    return (
        _MINIMAL.replace("ACTION", action)
        .replace("CATEGORY", category)
        .replace("SEVERITY", severity)
    )


def test_parse_accepts_a_minimal_catalogue() -> None:
    cat = parse_catalogue(_doc())
    info = cat.lookup("pki.key_rotate")
    assert info is not None and info.severity is Severity.NOTICE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_doc(category="admin"), "must be the action's known prefix"),
        (_doc(action="admin.user_create", category="admin"), "known prefix"),
        (_doc(severity="loud"), "unknown severity"),
        (_doc(action="pki"), "category.verb"),
        (_doc().replace("resource_type: key", "resource_type: key\n    extra: 1"), "unknown key"),
        (_doc().replace("    description: d\n    ocsf", "    ocsf"), "missing key"),
        ("version: 2\ndefaults: {}\ncategories: {}\nactions: {}\n", "unsupported"),
        ("version: [", "not valid YAML"),
    ],
)
def test_parse_rejects_broken_catalogues(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_catalogue(text)
