-- The mail read model, written in the transaction of the events it reflects.
-- A domain's row stays when mail is turned off (enabled = false): its stream's version and its
-- DKIM key (sealed) are known when it comes back.
CREATE TABLE mail.domains (
    domain        text PRIMARY KEY,
    enabled       boolean NOT NULL,
    selector      text NOT NULL,
    dkim_key      text NOT NULL,
    dkim_public   text NOT NULL,
    catch_all     uuid,
    enabled_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- Extra addresses: aliases (to accounts) and lists (to a group's members). An address is one
-- row: the primary key refuses a second kind for the same address.
CREATE TABLE mail.addresses (
    domain      text NOT NULL,
    local_part  text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('alias', 'list')),
    user_ids    uuid[] NOT NULL DEFAULT '{}',
    group_id    uuid,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (domain, local_part)
);

CREATE TABLE mail.mailboxes (
    user_id      uuid PRIMARY KEY,
    quota_bytes  bigint,
    updated_at   timestamptz NOT NULL
);

-- App passwords: the SHA-256 of each (unique), the label sealed; revoked ones stay, marked.
CREATE TABLE mail.app_passwords (
    password_id  uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    label        text NOT NULL,
    hash         text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX app_passwords_user ON mail.app_passwords (user_id);

CREATE TABLE mail.settings (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    dnsbl       jsonb NOT NULL DEFAULT '[]',
    updated_at  timestamptz NOT NULL
);
