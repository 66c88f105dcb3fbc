-- Bans of addresses with too many failed sign-ins: derived from LoginFailed events, so a
-- rebuild from the log gives the same bans.
CREATE TABLE firewall.failures (
    ip  inet NOT NULL,
    at  timestamptz NOT NULL
);
CREATE INDEX failures_ip_at ON firewall.failures (ip, at);

CREATE TABLE firewall.bans (
    ip       inet NOT NULL,
    since    timestamptz NOT NULL,
    until    timestamptz NOT NULL,
    strikes  integer NOT NULL,          -- 1 for the first ban of this address, then 2, 3, ...
    PRIMARY KEY (ip, since)
);
CREATE INDEX bans_until ON firewall.bans (until);
