"""The destinations file: loading, fallback rules, error reports without secrets, live reload."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path

import pytest

from connectors.destinations import (
    Destinations,
    DestinationsError,
    DestinationsWatcher,
    TenantDestinations,
    load_destinations,
)
from connectors.errors import SettingsError

pytestmark = pytest.mark.unit

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BRIEF_EXAMPLE = f"""\
tenants:
  tnt_7g8h9i0j:
    webhook: {{url: "https://siem.example.com/in", headers: {{Authorization: "Bearer tok"}},
              signing_secret: "{WHSEC}"}}
    syslog:  {{host: "siem.example.com", port: 6514, transport: tls}}
    storage: {{url: "s3://bucket/prefix", format: jsonl}}
  "*":         # default for every tenant not listed (single-tenant deployments)
    webhook: {{url: "https://default.example.com/in"}}
"""
# Distinctive values that must never appear in an error message or a log line.
SECRETS = (
    "Bearer S3CRET-HEADER-VALUE-1b9f",
    "whsec_S3CRETnotBase64!!zz",
    "whsec_c2hvcnQ=",  # valid base64, too short a key
    "hunter2-S3CRET-PASSWORD",
    "S3CRET-SPLUNK-TOKEN-77c1",
    "S3CRET-SYSLOG-PLAIN-STRING",
)
LOGGER = "connectors.destinations"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(DestinationsError) as info:
        load_destinations(path)
    assert isinstance(info.value, SettingsError)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


def test_brief_example_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "d.yaml", BRIEF_EXAMPLE)
    d = load_destinations(path)
    assert d.source == path
    assert set(d.tenants) == {"tnt_7g8h9i0j"}
    entry = d.tenants["tnt_7g8h9i0j"]
    assert entry.webhook is not None
    assert entry.webhook.url == "https://siem.example.com/in"
    assert entry.webhook.secrets() == [WHSEC]
    assert entry.webhook.headers["Authorization"].get_secret_value() == "Bearer tok"
    assert entry.syslog is not None
    assert entry.syslog.endpoint() == "tls://siem.example.com:6514"
    assert entry.storage is not None
    assert (entry.storage.provider, entry.storage.bucket, entry.storage.prefix) == (
        "s3",
        "bucket",
        "prefix",
    )
    assert (entry.storage.format, entry.storage.compression) == ("jsonl", "gzip")
    assert d.storage_for("tnt_7g8h9i0j") is entry.storage
    assert d.storage_for("tnt_other") is None  # "*" has no storage entry
    assert d.default is not None and d.default.webhook is not None
    assert d.default.webhook.url == "https://default.example.com/in"
    assert len(d.fingerprint) == 64


def test_fallback_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.yaml",
        """\
        tenants:
          own: {webhook: {url: "https://own.example.com"}}
          opted_out: {syslog: {host: "s.example.com"}}
          nothing: {}
          "*": {webhook: {url: "https://default.example.com"}}
        """,
    )
    d = load_destinations(path)
    own = d.webhook_for("own")
    assert own is not None and own.url == "https://own.example.com"
    # A listed tenant uses its own entry only: no webhook there means no webhook.
    assert d.webhook_for("opted_out") is None
    assert d.webhook_for("nothing") is None
    assert d.for_tenant("nothing") == TenantDestinations()
    opted_out = d.for_tenant("opted_out")
    assert opted_out is not None and opted_out.syslog is not None
    assert opted_out.syslog.host == "s.example.com"
    unlisted = d.webhook_for("tnt_unlisted")
    assert unlisted is not None and unlisted.url == "https://default.example.com"
    assert d.for_tenant("tnt_unlisted") is d.default


def test_without_default_unlisted_tenants_get_nothing(tmp_path: Path) -> None:
    d = load_destinations(
        write(tmp_path / "d.yaml", 'tenants: {a: {webhook: {url: "https://a.example.com"}}}')
    )
    assert d.default is None
    assert d.for_tenant("b") is None and d.webhook_for("b") is None
    assert Destinations.empty().for_tenant("a") is None
    assert Destinations.empty().webhook_for("a") is None


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "tenants:\n", "tenants: {}\n", "{}\n"])
def test_empty_files_mean_no_destinations(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "d.yaml", text)
    d = load_destinations(path)
    assert d.tenants == {} and d.default is None
    if not text:
        assert d == Destinations.empty(path)


def test_aliases_and_merge_keys_work(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.yaml",
        """\
        tenants:
          a: {webhook: &hook {url: "https://a.example.com", max_events_per_request: 10}}
          b: {webhook: {<<: *hook, max_events_per_request: 5}}
        """,
    )
    d = load_destinations(path)
    b = d.webhook_for("b")
    assert b is not None and (b.url, b.max_events_per_request) == ("https://a.example.com", 5)


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.yaml",
        """\
        tenants:
          tnt_a:
            webhok: {url: "https://a.example.com"}
            webhook:
              url: "ftp://a.example.com"
              urll: "https://a.example.com"
              format: splunk
              max_events_per_request: 0
              signing_secret: [42]
            syslog: "tls://s.example.com"
          tnt_b: "https://b.example.com"
          "*": {webhook: {headers: {Authorization: "x"}}}
        tennants: {}
        """,
    )
    problems = problems_of(path)
    assert sorted(problems) == sorted(
        [
            "tenants.tnt_a.webhok: unknown key (did you mean 'webhook'?)",
            "tenants.tnt_a.webhook.url: must be an absolute https:// URL",
            "tenants.tnt_a.webhook.urll: unknown key (did you mean 'url'?)",
            "tenants.tnt_a.webhook.format: Input should be 'generic' or 'splunk_hec'",
            "tenants.tnt_a.webhook.max_events_per_request: Input should be greater than or "
            "equal to 1",
            "tenants.tnt_a.webhook.signing_secret[0]: Input should be a valid string",
            "tenants.tnt_a.syslog: Input should be a valid dictionary or instance of "
            "SyslogDestination",
            "tenants.tnt_b: must be a mapping of webhook, syslog, storage",
            'tenants."*".webhook.url: Field required',
            "tennants: unknown key (did you mean 'tenants'?)",
        ]
    )


def test_nested_unknown_keys_get_suggestions(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.yaml",
        """\
        tenants:
          a:
            webhook:
              url: "https://a.example.com"
              format: splunk_hec
              splunk: {token: "t", sourcetyp: "_json"}
            storag: {}
        """,
    )
    assert problems_of(path) == [
        "tenants.a.webhook.splunk.sourcetyp: unknown key (did you mean 'sourcetype'?)",
        "tenants.a.storag: unknown key (did you mean 'storage'?)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tenants: [a, b]\n", "tenants: must be a mapping of tenant id to destinations"),
        ("tenants: x\n", "tenants: must be a mapping of tenant id to destinations"),
        ("- tenants\n", "(top level): must be a mapping with a 'tenants' key"),
        ("just text\n", "(top level): must be a mapping with a 'tenants' key"),
    ],
)
def test_wrong_shapes(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_of(write(tmp_path / "d.yaml", text)) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        'tenants:\n  a: {webhook: {url: "https://a.example.com"}\n',
        "tenants:\n  a:\n\t webhook: {}\n",
        "tenants: {a: 1}\n---\ntenants: {}\n",
        "tenants: {a: !!python/object:os.system {}}\n",
    ],
)
def test_yaml_errors_name_the_line(tmp_path: Path, text: str) -> None:
    [problem] = problems_of(write(tmp_path / "d.yaml", text))
    assert problem.startswith("line ")


def test_not_text(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_bytes(b"tenants:\n  a: \x80\x81\n")
    assert problems_of(path) == ["byte 14: not valid YAML text"]


def test_duplicate_keys_are_errors_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.yaml",
        """\
        tenants:
          a:
            webhook: {url: "https://a.example.com", url: "https://b.example.com"}
          "*": {}
          a: {}
        tenants: {}
        """,
    )
    assert problems_of(path) == [
        "tenants.a.webhook.url: duplicate key (lines 3 and 3)",
        "tenants.a: duplicate key (lines 2 and 5)",
        "tenants: duplicate key (lines 1 and 6)",
    ]


@pytest.mark.parametrize(
    "tenant", ["-lead", "_lead", "has space", "tnt/a", "tnt_ü", "a" * 129, "**", ""]
)
def test_bad_tenant_ids(tmp_path: Path, tenant: str) -> None:
    path = write(tmp_path / "d.yaml", f'tenants: {{"{tenant}": {{}}}}\n')
    [problem] = problems_of(path)
    assert problem.startswith("tenants.")
    assert "tenant id must match [A-Za-z0-9][A-Za-z0-9_.:-]*" in problem


@pytest.mark.parametrize(("key", "shown"), [("123", "123"), ("yes", "True"), ("null", "None")])
def test_tenant_ids_that_yaml_reads_as_other_types(tmp_path: Path, key: str, shown: str) -> None:
    path = write(tmp_path / "d.yaml", f"tenants: {{{key}: {{}}}}\n")
    assert problems_of(path) == [f"tenants: tenant id {shown} is not a string; quote it"]


@pytest.mark.parametrize("tenant", ["a", "0", "tnt.a:b-c_d", "A" * 128, "*"])
def test_good_tenant_ids(tmp_path: Path, tenant: str) -> None:
    d = load_destinations(write(tmp_path / "d.yaml", f'tenants: {{"{tenant}": {{}}}}\n'))
    assert d.for_tenant(tenant) == TenantDestinations()
    assert "*" not in d.tenants


def test_unreadable_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "missing.yaml") == [
        "cannot read the file: No such file or directory"
    ]
    assert problems_of(tmp_path) == ["cannot read the file: Is a directory"]


def test_storage_entries_are_validated_and_named_by_key_path(tmp_path: Path) -> None:
    account_key = "S3CRETazureKEY+/" * 5 + "=="  # base64-looking, distinctive
    path = write(
        tmp_path / "d.yaml",
        f"""\
        tenants:
          a: {{storage: {{url: "azure://logs/zaita", kms_key_id: "alias/k",
                         connection_string: "AccountName=acct;AccountKey={account_key}"}}}}
          b: {{storage: {{url: "s3://Bad_Bucket/x", formt: json}}}}
          c: {{storage: {{url: "gs://audit-logs/../up", interval: "5 minutes"}}}}
          d: {{storage: {{url: "azure://logs", account_url: "https://acct.blob.core.windows.net",
                         account_key: "not base64 {account_key}!"}}}}
          "*": {{storage: {{url: "s3://audit-logs/zaita", interval: 1h, endpoint_url:
                           "http://127.0.0.1:8333"}}}}
        """,
    )
    problems = problems_of(path)
    assert sorted(problems) == sorted(
        [
            "tenants.a.storage: kms_key_id applies to s3 only",
            "tenants.b.storage.url: bucket name must have 3-63 lower-case letters, digits, '.' "
            "or '-', starting and ending alphanumeric",
            "tenants.b.storage.formt: unknown key (did you mean 'format'?)",
            "tenants.c.storage.url: prefix segment 1 is '..'",
            "tenants.c.storage.interval: duration '5 minutes' is not a number followed by s, m, "
            "h or d (e.g. '30s', '5m', '1h', '1d')",
            "tenants.d.storage.account_key: must be the base64 access key of the storage account",
        ]
    )
    text = str(problems_of(path)) + "\n".join(problems)
    assert "S3CRET" not in text and "AccountKey" not in text


def test_storage_for_follows_the_fallback_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.yaml",
        """\
        tenants:
          own: {storage: {url: "gs://own-bucket/audit/", format: json, compression: none}}
          opted_out: {webhook: {url: "https://o.example.com"}}
          "*": {storage: {url: "s3://shared-audit/zaita", interval: 1h,
                          endpoint_url: "http://127.0.0.1:8333"}}
        """,
    )
    d = load_destinations(path)
    own = d.storage_for("own")
    assert own is not None and own.endpoint() == "gs://own-bucket/audit"
    assert own.extension == "json"
    assert d.storage_for("opted_out") is None
    shared = d.storage_for("tnt_unlisted")
    assert shared is not None and shared.interval == 3600.0 and shared.path_style
    assert shared.endpoint() == "s3://shared-audit/zaita via http://127.0.0.1:8333"


def secret_leaking_file(tmp_path: Path) -> Path:
    header, bad_b64, short, password, token, plain = SECRETS
    return write(
        tmp_path / "d.yaml",
        f"""\
        tenants:
          a:
            webhook:
              url: "https://user:{password}@a.example.com/in"
              headers: {{Authorization: "{header}\\n"}}
          b: {{webhook: {{url: "https://b.example.com", signing_secret: "{bad_b64}"}}}}
          c: {{webhook: {{url: "https://c.example.com", signing_secret: ["{WHSEC}", "{short}"]}}}}
          d:
            webhook: {{url: "https://d.example.com", format: splunk_hec,
                       splunk: {{token: "{token}", channel: "{token}"}}}}
          e: {{syslog: "{plain}", storage: ["{plain}"]}}
          f: {{webhook: {{url: "https://f.example.com", headers: {{"{header}": "{header}"}}}}}}
          z: {{webhook: {{url: "{password}"}}}}
          z: {{webhook: {{url: "{password}-2"}}}}
        """,
    )


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    path = secret_leaking_file(tmp_path)
    with pytest.raises(DestinationsError) as info:
        load_destinations(path)
    problems = info.value.problems
    assert len(problems) >= 8
    text = str(info.value) + "\n".join(problems) + repr(info.value.args)
    for secret in (*SECRETS, WHSEC, "S3CRET", "hunter2", "c2hvcnQ", "notBase64"):
        assert secret not in text
    # Still precise about where.
    assert "tenants.a.webhook.url: must not carry credentials; put them in headers" in problems
    assert any(p.startswith("tenants.a.webhook.headers:") for p in problems)
    assert any(p.startswith("tenants.c.webhook.signing_secret: secret #2") for p in problems)
    assert "tenants.z: duplicate key (lines 13 and 14)" in problems
    # Defence in depth: a value that reaches a message anyway (here as a header name) is blanked.
    assert "tenants.f.webhook.headers: header name '<redacted>' is not a valid HTTP token" in (
        problems
    )


def test_secrets_never_appear_in_yaml_syntax_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "d.yaml", f'tenants: {{a: {{webhook: {{signing_secret: "{WHSEC}\n')
    with pytest.raises(DestinationsError) as info:
        load_destinations(path)
    assert WHSEC not in str(info.value) and "MfKQ9r8" not in str(info.value)


# -- the watcher ---------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Destinations, Destinations]] = []

    def __call__(self, old: Destinations, new: Destinations) -> None:
        self.calls.append((old, new))


def url_of(d: Destinations, tenant: str) -> str | None:
    hook = d.webhook_for(tenant)
    return hook.url if hook is not None else None


def hook_file(path: Path, url: str) -> Path:
    return write(path, f'tenants: {{"*": {{webhook: {{url: "{url}"}}}}}}\n')


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]


def test_watcher_swaps_on_change(tmp_path: Path) -> None:
    path = hook_file(tmp_path / "d.yaml", "https://one.example.com")
    first = load_destinations(path)
    recorder = Recorder()
    watcher = DestinationsWatcher(path, recorder, current=first)
    assert watcher.current is first
    assert watcher.check() is False and recorder.calls == []
    hook_file(path, "https://two.example.com")
    assert watcher.check() is True
    [(old, new)] = recorder.calls
    assert old is first and new is watcher.current
    assert url_of(new, "x") == "https://two.example.com"
    assert watcher.check() is False and len(recorder.calls) == 1


def test_watcher_without_current_loads_on_first_check(tmp_path: Path) -> None:
    path = hook_file(tmp_path / "d.yaml", "https://one.example.com")
    recorder = Recorder()
    watcher = DestinationsWatcher(path, recorder)
    assert watcher.current == Destinations.empty()
    assert watcher.check() is True
    assert recorder.calls[0][0] == Destinations.empty()
    assert url_of(watcher.current, "x") == "https://one.example.com"


def test_invalid_edit_keeps_old_config_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = hook_file(tmp_path / "d.yaml", "https://one.example.com")
    first = load_destinations(path)
    recorder = Recorder()
    watcher = DestinationsWatcher(path, recorder, current=first)
    secret_leaking_file(tmp_path)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert watcher.check() is False
        assert watcher.check() is False
    assert watcher.current is first and recorder.calls == []
    [record] = errors(caplog)
    assert record.getMessage() == "Destinations file invalid; keeping the previous configuration."
    assert record.__dict__["file"] == str(path)
    problems = record.__dict__["problems"]
    assert "tenants.z: duplicate key (lines 13 and 14)" in problems
    logged = caplog.text + repr(problems)
    for secret in (*SECRETS, "S3CRET"):
        assert secret not in logged
    # A fix is picked up; breaking it again is logged again.
    hook_file(path, "https://two.example.com")
    assert watcher.check() is True
    path.write_text("tenants: [\n", encoding="utf-8")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert watcher.check() is False
    assert len(errors(caplog)) == 2
    assert url_of(watcher.current, "x") == "https://two.example.com"


def test_deleted_file_keeps_old_config_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = hook_file(tmp_path / "d.yaml", "https://one.example.com")
    first = load_destinations(path)
    recorder = Recorder()
    watcher = DestinationsWatcher(path, recorder, current=first)
    path.unlink()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert watcher.check() is False
        assert watcher.check() is False
    [record] = errors(caplog)
    assert record.getMessage() == (
        "Destinations file unreadable; keeping the previous configuration."
    )
    assert record.__dict__["file"] == str(path)
    assert record.__dict__["error"] == "No such file or directory"
    assert watcher.current is first and recorder.calls == []
    hook_file(path, "https://two.example.com")
    assert watcher.check() is True
    assert url_of(watcher.current, "x") == "https://two.example.com"


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        DestinationsWatcher(tmp_path / "d.yaml", Recorder(), interval=0)


async def test_run_picks_up_a_change(tmp_path: Path) -> None:
    path = hook_file(tmp_path / "d.yaml", "https://one.example.com")
    changed = asyncio.Event()
    seen: list[str | None] = []

    def on_change(old: Destinations, new: Destinations) -> None:
        seen.append(url_of(new, "x"))
        changed.set()

    watcher = DestinationsWatcher(path, on_change, interval=0.05, current=load_destinations(path))
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.sleep(0.1)
        assert seen == []
        hook_file(path, "https://two.example.com")
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert seen == ["https://two.example.com"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_survives_a_failing_callback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = hook_file(tmp_path / "d.yaml", "https://one.example.com")
    calls: list[Destinations] = []
    done = asyncio.Event()

    def on_change(old: Destinations, new: Destinations) -> None:
        calls.append(new)
        if len(calls) == 1:
            raise RuntimeError("connector bug")
        done.set()

    watcher = DestinationsWatcher(path, on_change, interval=0.05)
    task = asyncio.create_task(watcher.run())
    try:
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            async with asyncio.timeout(5):
                while not calls:
                    await asyncio.sleep(0.01)
            assert url_of(watcher.current, "x") == "https://one.example.com"
            hook_file(path, "https://two.example.com")
            await asyncio.wait_for(done.wait(), timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [r.getMessage() for r in errors(caplog)] == ["Destinations on_change callback failed."]
