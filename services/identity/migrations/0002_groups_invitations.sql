-- Groups, pending invitations and password-reset links (services/identity/groups.py).
--
-- Nothing here has a foreign key to identity.users: the identity projection empties its read
-- model with TRUNCATE before a rebuild, and Postgres refuses to truncate a table that others
-- reference. Two triggers on identity.users keep these tables in step with it instead:
-- deleting a user (the UserDeleted step) deletes their memberships and reset links, and
-- truncating the users (a rebuild) empties these tables too, so the replay starts clean.

CREATE TABLE identity.groups (
    group_id    uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL,
    version     integer NOT NULL,            -- the version of the group's stream
    CONSTRAINT groups_name_unique UNIQUE (name)
);

CREATE TABLE identity.group_members (
    group_id  uuid NOT NULL REFERENCES identity.groups ON DELETE CASCADE,
    user_id   uuid NOT NULL,                 -- an identity.users row (see the triggers below)
    added_at  timestamptz NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON identity.group_members (user_id);

-- Pending invitations only: an accepted or revoked one is deleted, an expired one pruned.
CREATE TABLE identity.invitations (
    invitation_id  uuid PRIMARY KEY,
    token_hash     text NOT NULL UNIQUE,     -- SHA-256 hex of the link token
    recipient_index text NOT NULL,           -- keyed hash of the folded invited email
    recipient      text NOT NULL,            -- the invited email, sealed (subject invitation:<id>)
    is_admin       boolean NOT NULL,
    group_ids      uuid[] NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    version        integer NOT NULL          -- the version of the invitation's stream
);
CREATE INDEX invitations_expiry ON identity.invitations (expires_at);

-- Unused password-reset links; a used one is deleted with every other link of its user.
CREATE TABLE identity.password_resets (
    reset_id    uuid PRIMARY KEY,
    token_hash  text NOT NULL UNIQUE,        -- SHA-256 hex of the link token
    user_id     uuid NOT NULL,               -- an identity.users row (see the triggers below)
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX password_resets_user ON identity.password_resets (user_id);

CREATE FUNCTION identity.user_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM identity.group_members WHERE user_id = OLD.user_id;
    DELETE FROM identity.password_resets WHERE user_id = OLD.user_id;
    RETURN NULL;
END $$;

CREATE TRIGGER users_gone_from_groups AFTER DELETE ON identity.users
    FOR EACH ROW EXECUTE FUNCTION identity.user_gone();

CREATE FUNCTION identity.users_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE identity.group_members, identity.groups, identity.invitations,
             identity.password_resets;
    RETURN NULL;
END $$;

CREATE TRIGGER users_truncated_groups AFTER TRUNCATE ON identity.users
    FOR EACH STATEMENT EXECUTE FUNCTION identity.users_truncated();
