-- Version 1 of the index schema, SQLite (3.37 or newer: STRICT tables).
--
-- audit_events: one row per (tenant_id, event_id). The primary key is the idempotency key:
-- at-least-once delivery hands the index the same event again after a crash or rebalance,
-- and the store skips ids the tenant already has. Event ids are unique platform-wide, but
-- keying by tenant too means one tenant's ids can never block or reveal another's.
-- sequence is the tenant's ingestion sequence (tenant_sequences below), unique per tenant.
-- body is the event's JSON exactly as delivered; the API serves it as it is.
-- The table keeps its rowid: rows are appended in ingestion order, and retention deletes by
-- rowid ranges found through the retention index.
CREATE TABLE audit_events (
    tenant_id     TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    sequence      INTEGER NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    action        TEXT    NOT NULL,
    category      TEXT    NOT NULL,
    actor_id      TEXT    NOT NULL,
    actor_type    TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    source_ip     TEXT,
    body          BLOB    NOT NULL,
    PRIMARY KEY (tenant_id, event_id),
    -- Serves the pollers' mode: WHERE tenant_id = ? AND sequence > ? ORDER BY sequence.
    UNIQUE (tenant_id, sequence)
) STRICT;

-- Every query is "tenant_id = ? AND <filters> ORDER BY timestamp_ms, event_id LIMIT n", with a
-- keyset "(timestamp_ms, event_id) > (?, ?)". An index whose columns are (tenant_id, <equality
-- column>, timestamp_ms, event_id) answers such a query by reading the first n matching
-- entries in order: no sort, no scan of rows that do not match, and the same cost for the
-- last page as for the first.
--
-- No filter, or only a time range: the default listing and the NDJSON export.
CREATE INDEX audit_events_by_time ON audit_events (tenant_id, timestamp_ms, event_id);
-- action = ? (exact), and action prefixes that are not a whole category (a range on action;
-- those pages are sorted, as several actions interleave in time).
CREATE INDEX audit_events_by_action ON audit_events (tenant_id, action, timestamp_ms, event_id);
-- category = ?, and the API's "certificate.*" (the store turns a "<category>." prefix into
-- category = ?, so the commonest prefix query needs no sort).
CREATE INDEX audit_events_by_category
    ON audit_events (tenant_id, category, timestamp_ms, event_id);
-- actor_id = ?: "what did this user or machine account do" (selective: one actor among many).
CREATE INDEX audit_events_by_actor ON audit_events (tenant_id, actor_id, timestamp_ms, event_id);
-- resource_id = ? (with or without resource_type, checked on the few rows found): "who
-- touched this certificate".
CREATE INDEX audit_events_by_resource
    ON audit_events (tenant_id, resource_id, timestamp_ms, event_id);
-- source_ip = ?: incident response ("everything from this address").
CREATE INDEX audit_events_by_source_ip
    ON audit_events (tenant_id, source_ip, timestamp_ms, event_id);
-- Not indexed on purpose: actor_type, resource_type and outcome have a handful of values
-- each, so an index on them alone selects a large share of a tenant's rows; the time index
-- with the condition checked per row serves them, and every extra index slows ingestion.
--
-- Retention: DELETE … WHERE timestamp_ms < cutoff across all tenants, in batches. The
-- tenant-leading indexes cannot find those rows; this one finds exactly them.
CREATE INDEX audit_events_by_age ON audit_events (timestamp_ms);

-- The last ingestion sequence handed out per tenant. A counter row instead of MAX(sequence):
-- retention may delete every row of a quiet tenant, and sequences must never restart (a
-- poller would wait for numbers it has already seen). SQLite has one writer at a time
-- (BEGIN IMMEDIATE), so sequences are assigned and committed in order by construction.
CREATE TABLE tenant_sequences (
    tenant_id     TEXT    NOT NULL PRIMARY KEY,
    last_sequence INTEGER NOT NULL CHECK (last_sequence >= 0)
) STRICT;

-- Machine accounts of the REST API. Only a hash of each token is stored (the API hashes what
-- it is given and looks the hash up). scopes is a space-separated list (audit:read ...).
-- revoked_ms stays NULL while the account is active; revoked rows are kept for the record.
CREATE TABLE machine_accounts (
    account_id TEXT    NOT NULL PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    scopes     TEXT    NOT NULL,
    token_hash BLOB    NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
) STRICT;
-- accounts list --tenant T, in creation order.
CREATE INDEX machine_accounts_by_tenant ON machine_accounts (tenant_id, created_ms);
