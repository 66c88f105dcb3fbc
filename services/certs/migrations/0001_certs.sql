-- The certs read model: one row per certificate primary name that is not forgotten, and the
-- ACME accounts. A row is the fold of its `cert-` stream (services/certs/projections.py).
CREATE TABLE certs.certificates (
    primary_name    text PRIMARY KEY,
    stream          text NOT NULL,
    names           text[] NOT NULL,     -- the names asked for (or uploaded for)
    challenge       text NOT NULL,
    kind            text,                -- acme | custom; NULL while only a fallback serves
    cert_names      text[],              -- the names the current certificate covers
    issuer          text,
    not_before      timestamptz,
    not_after       timestamptz,
    fingerprint     text,
    state           text NOT NULL,       -- valid | fallback | ordering | failed
    task_id         uuid,                -- the order without outcome, if any
    failures        integer NOT NULL,    -- consecutive failed orders
    last_error      text,
    last_error_code text,
    next_attempt_at timestamptz,
    stream_version  integer NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX certificates_names ON certs.certificates USING gin (names);
CREATE INDEX certificates_cert_names ON certs.certificates USING gin (cert_names);

CREATE TABLE certs.accounts (
    directory     text PRIMARY KEY,
    uri           text NOT NULL,
    registered_at timestamptz NOT NULL
);
