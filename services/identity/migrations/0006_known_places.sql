-- Where each user signed in from, for the notice of an administrator's sign-in from a place
-- not seen before (services/identity/sessions.py): a keyed hash (Keyring.blind_index) of the
-- client address and the browser family, never either in clear. Rebuilt from
-- `SessionStarted.place` (sealed to its week, like the address) and forgotten after the
-- retention period of addresses, like known_addresses.
CREATE TABLE identity.known_places (
    user_id  uuid NOT NULL REFERENCES identity.users ON DELETE CASCADE,
    place    text NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, place)
);

-- When the user last signed in (null: never): a first sign-in is from no "new place".
ALTER TABLE identity.users ADD COLUMN signed_in_at timestamptz;
