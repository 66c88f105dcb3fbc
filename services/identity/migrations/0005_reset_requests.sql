-- Anonymous password-reset requests, for their limits per client address and per target email
-- (services/identity/groups.py). Operational, not events: a request for an email without an
-- account appends nothing, so nobody can fill the log with them. Pruned after a day; a rebuild
-- leaves them as they are.

CREATE TABLE identity.reset_requests (
    at           timestamptz NOT NULL,
    ip           text,
    email_index  text NOT NULL             -- keyed hash of the folded email asked for
);
CREATE INDEX reset_requests_ip ON identity.reset_requests (ip, at);
CREATE INDEX reset_requests_email ON identity.reset_requests (email_index, at);
