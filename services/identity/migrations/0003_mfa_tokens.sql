-- Second factor (TOTP), sign-in tickets, API tokens and the MFA policy (services/identity/mfa.py).
-- No foreign keys to identity.users: the identity projection empties its read model with
-- TRUNCATE before a rebuild, and Postgres refuses to truncate a table others reference.
-- Triggers keep these tables in step instead: deleting a user (the UserDeleted step) deletes
-- their rows here; disabling one (the UserDisabled step) ends their API tokens and sign-in
-- tickets, as it ends their sessions, and enabling them again does not revive them.
-- A rebuild does not empty these tables: their steps are idempotent and re-applied in order,
-- so the rows come out the same, and a rebuild run where these steps are not loaded (a
-- process that imports only services.identity.projections) leaves them as they were instead
-- of losing every second factor and token. Look-ups join identity.users all the same.

CREATE TABLE identity.totp (
    user_id         uuid PRIMARY KEY,
    secret          text NOT NULL,              -- sealed with the user's key
    enabled         boolean NOT NULL,           -- false: enrolment started, not yet confirmed
    last_step       bigint,                     -- the last accepted time step (each code once)
    recovery_codes  text[] NOT NULL DEFAULT '{}'  -- SHA-256 hex of the unused recovery codes
);

-- Password checked, second factor pending: operational and short-lived, not events (a rebuild
-- keeps them; they expire within minutes). Only the SHA-256 of the ticket is kept.
CREATE TABLE identity.login_tickets (
    ticket_hash  text PRIMARY KEY,
    user_id      uuid NOT NULL,
    user_agent   text,
    rehash       text,                          -- sealed stronger password hash, if one is due
    expires_at   timestamptz NOT NULL
);
CREATE INDEX login_tickets_expiry ON identity.login_tickets (expires_at);

CREATE TABLE identity.api_tokens (
    token_id    uuid PRIMARY KEY,
    token_hash  text NOT NULL UNIQUE,           -- SHA-256 hex; the token itself is never kept
    user_id     uuid NOT NULL,
    name        text NOT NULL,                  -- sealed with the user's key
    scope       text NOT NULL CHECK (scope IN ('read', 'full')),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz                     -- null: never
);
CREATE INDEX api_tokens_user ON identity.api_tokens (user_id);

CREATE TABLE identity.mfa_policy (
    key                 boolean PRIMARY KEY DEFAULT true CHECK (key),  -- one row
    require_admin_totp  boolean NOT NULL
);

CREATE FUNCTION identity.mfa_user_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM identity.totp WHERE user_id = OLD.user_id;
    DELETE FROM identity.login_tickets WHERE user_id = OLD.user_id;
    DELETE FROM identity.api_tokens WHERE user_id = OLD.user_id;
    RETURN NULL;
END $$;

CREATE TRIGGER users_gone_from_mfa AFTER DELETE ON identity.users
    FOR EACH ROW EXECUTE FUNCTION identity.mfa_user_gone();

CREATE FUNCTION identity.mfa_user_disabled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM identity.login_tickets WHERE user_id = NEW.user_id;
    DELETE FROM identity.api_tokens WHERE user_id = NEW.user_id;
    RETURN NULL;
END $$;

CREATE TRIGGER users_disabled_mfa AFTER UPDATE OF disabled ON identity.users
    FOR EACH ROW WHEN (NEW.disabled AND NOT OLD.disabled)
    EXECUTE FUNCTION identity.mfa_user_disabled();
