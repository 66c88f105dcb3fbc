-- Apps that are mail clients for the platform's people (their `mailclient` addon, e.g. webmail):
-- the network they connect from, which Dovecot trusts to name the person's own address (IMAP
-- ID x-originating-ip) so failed sign-ins count against the person's address, not the app's.
-- A removed app keeps its row, marked.
CREATE TABLE mail.clients (
    app_id      text PRIMARY KEY,
    network     cidr NOT NULL,
    removed     boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);
