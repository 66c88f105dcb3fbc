-- Forwarding of a mailbox: the addresses its mail goes on to (1 to 5), each sealed with the
-- key of subject `mailbox-<user_id>` (an outside address is personal data), and whether the
-- mailbox keeps a copy. No row: no forwarding.
CREATE TABLE mail.forwarding (
    user_id     uuid PRIMARY KEY,
    addresses   text[] NOT NULL CHECK (cardinality(addresses) BETWEEN 1 AND 5),
    keep_copy   boolean NOT NULL,
    updated_at  timestamptz NOT NULL
);
