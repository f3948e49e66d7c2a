-- Version 1 of the index schema, PostgreSQL (13 or newer).
--
-- Text columns use the "C" collation: event ids and actions then sort by code point (the same
-- order as SQLite's and Python's, so a cursor means the same on either store), comparisons
-- are cheaper than a linguistic collation's, and the btree indexes serve range conditions on
-- them (the action prefix) whatever the database's default locale is.
--
-- audit_events: one row per (tenant_id, event_id). The primary key is the idempotency key:
-- at-least-once delivery hands the index the same event again after a crash or rebalance,
-- and the store skips ids the tenant already has. Event ids are unique platform-wide, but
-- keying by tenant too means one tenant's ids can never block or reveal another's.
-- sequence is the tenant's ingestion sequence (tenant_sequences below), unique per tenant.
-- body is the event's JSON exactly as delivered (bytea, not jsonb, which would reorder keys
-- and normalise numbers); the API serves it as it is.
CREATE TABLE audit_events (
    tenant_id     text COLLATE "C" NOT NULL,
    event_id      text COLLATE "C" NOT NULL,
    sequence      bigint           NOT NULL,
    timestamp_ms  bigint           NOT NULL,
    action        text COLLATE "C" NOT NULL,
    category      text COLLATE "C" NOT NULL,
    actor_id      text COLLATE "C" NOT NULL,
    actor_type    text COLLATE "C" NOT NULL,
    resource_type text COLLATE "C" NOT NULL,
    resource_id   text COLLATE "C" NOT NULL,
    outcome       text COLLATE "C" NOT NULL,
    source_ip     text COLLATE "C",
    body          bytea            NOT NULL,
    CONSTRAINT audit_events_pkey PRIMARY KEY (tenant_id, event_id),
    -- Serves the pollers' mode: WHERE tenant_id = $1 AND sequence > $2 ORDER BY sequence.
    CONSTRAINT audit_events_sequence_key UNIQUE (tenant_id, sequence)
);

-- Every query is "tenant_id = $1 AND <filters> ORDER BY timestamp_ms, event_id LIMIT n", with a
-- keyset "(timestamp_ms, event_id) > ($2, $3)". An index whose columns are (tenant_id,
-- <equality column>, timestamp_ms, event_id) answers such a query by reading the first n
-- matching entries in order: no sort, no scan of rows that do not match, and the same cost
-- for the last page as for the first (the row comparison is an index condition).
--
-- No filter, or only a time range: the default listing and the NDJSON export.
CREATE INDEX audit_events_by_time ON audit_events (tenant_id, timestamp_ms, event_id);
-- action = $n (exact), and action prefixes that are not a whole category (a range on action;
-- those pages are sorted, as several actions interleave in time).
CREATE INDEX audit_events_by_action ON audit_events (tenant_id, action, timestamp_ms, event_id);
-- category = $n, and the API's "certificate.*" (the store turns a "<category>." prefix into
-- category = $n, so the commonest prefix query needs no sort).
CREATE INDEX audit_events_by_category
    ON audit_events (tenant_id, category, timestamp_ms, event_id);
-- actor_id = $n: "what did this user or machine account do" (one actor among many).
CREATE INDEX audit_events_by_actor ON audit_events (tenant_id, actor_id, timestamp_ms, event_id);
-- resource_id = $n (with or without resource_type, checked on the few rows found): "who
-- touched this certificate".
CREATE INDEX audit_events_by_resource
    ON audit_events (tenant_id, resource_id, timestamp_ms, event_id);
-- source_ip = $n: incident response ("everything from this address").
CREATE INDEX audit_events_by_source_ip
    ON audit_events (tenant_id, source_ip, timestamp_ms, event_id);
-- Not indexed on purpose: actor_type, resource_type and outcome have a handful of values
-- each, so an index on them alone selects a large share of a tenant's rows; the time index
-- with the condition checked per row serves them, and every extra index slows ingestion.
--
-- Retention: DELETE … WHERE timestamp_ms < cutoff across all tenants, in batches. The
-- tenant-leading indexes cannot find those rows; this one finds exactly them.
CREATE INDEX audit_events_by_age ON audit_events (timestamp_ms);

-- The last ingestion sequence handed out per tenant. An insert transaction locks its tenants'
-- rows here (in tenant order, so two transactions cannot deadlock), assigns the next numbers,
-- writes its events and the new last value, and commits; the lock is held until then. A
-- second transaction for the same tenant waits on the row lock, so it can only assign higher
-- numbers after the first one's rows are committed and visible: a poller paging by sequence
-- never sees N+1 while N is still invisible. A counter row instead of MAX(sequence) also
-- survives retention deleting every row of a quiet tenant (sequences never restart).
CREATE TABLE tenant_sequences (
    tenant_id     text COLLATE "C" NOT NULL PRIMARY KEY,
    last_sequence bigint           NOT NULL CHECK (last_sequence >= 0)
);

-- Machine accounts of the REST API. Only a hash of each token is stored (the API hashes what
-- it is given and looks the hash up). revoked_ms stays NULL while the account is active;
-- revoked rows are kept for the record.
CREATE TABLE machine_accounts (
    account_id text COLLATE "C" NOT NULL PRIMARY KEY,
    tenant_id  text COLLATE "C" NOT NULL,
    name       text             NOT NULL,
    scopes     text[]           NOT NULL,
    token_hash bytea            NOT NULL UNIQUE,
    created_ms bigint           NOT NULL,
    revoked_ms bigint
);
-- accounts list --tenant T, in creation order.
CREATE INDEX machine_accounts_by_tenant ON machine_accounts (tenant_id, created_ms);
