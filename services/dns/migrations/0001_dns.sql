-- The dns read model: the domains Homeport manages and the records it owns in their zones.
-- `provider` is the config as recorded: its secret fields are sealed values, never clear text.
CREATE TABLE dns.domains (
    domain        text PRIMARY KEY,
    zone          text NOT NULL,
    kind          text NOT NULL,
    provider      jsonb NOT NULL,
    server_ipv4   text,
    server_ipv6   text,
    verified_at   timestamptz,
    verify_error  text,
    added_at      timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);

-- One row per RRset Homeport created. Within a zone an RRset has one owner: a second domain
-- sharing the zone cannot claim it (the transaction that would record it fails).
CREATE TABLE dns.records (
    domain      text NOT NULL,
    zone        text NOT NULL,
    name        text NOT NULL,
    type        text NOT NULL,
    "values"    jsonb NOT NULL,
    ttl         integer NOT NULL,
    owner       text NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (domain, name, type)
);
CREATE UNIQUE INDEX records_rrset ON dns.records (zone, name, type);
