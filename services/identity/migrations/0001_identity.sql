-- The identity read model. Written in the same transaction as the events it reflects
-- (see services/identity/projections.py), so its unique indexes also guard the invariants.

CREATE TABLE identity.users (
    user_id       uuid PRIMARY KEY,
    username_index text NOT NULL UNIQUE,     -- keyed hash (Keyring.blind_index) of the folded name
    email_index   text NOT NULL UNIQUE,      -- keyed hash of the folded email
    username      text NOT NULL,             -- sealed with the user's key
    email         text NOT NULL,             -- sealed with the user's key
    display_name  text,                      -- sealed with the user's key
    password_hash text NOT NULL,             -- sealed with the user's key
    is_admin      boolean NOT NULL DEFAULT false,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL,
    version       integer NOT NULL           -- the version of the user's stream
);

CREATE TABLE identity.sessions (
    session_hash  text PRIMARY KEY,          -- SHA-256 hex of the cookie value
    session_id    uuid NOT NULL UNIQUE,      -- the public name of a session (list, revoke)
    user_id       uuid NOT NULL REFERENCES identity.users ON DELETE CASCADE,
    ip            text,
    user_agent    text,
    started_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,      -- absolute end
    idle_seconds  integer NOT NULL,
    last_seen     timestamptz NOT NULL       -- operational, not an event: see projections.py
);
CREATE INDEX sessions_user ON identity.sessions (user_id);

-- Failed sign-ins, for the per-address and per-account limits (never a global lock).
CREATE TABLE identity.login_failures (
    event_id  uuid PRIMARY KEY,
    user_id   uuid,
    ip        text,
    at        timestamptz NOT NULL
);
CREATE INDEX login_failures_ip ON identity.login_failures (ip, at);
CREATE INDEX login_failures_user ON identity.login_failures (user_id, at);

-- Addresses a user signed in from: past the account limit, these still get their password checked.
CREATE TABLE identity.known_addresses (
    user_id  uuid NOT NULL REFERENCES identity.users ON DELETE CASCADE,
    ip       text NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, ip)
);

CREATE TABLE identity.platform (
    key    text PRIMARY KEY,
    value  jsonb NOT NULL
);
