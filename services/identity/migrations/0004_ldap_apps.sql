-- LDAP service accounts of apps (services/identity/ldap_apps.py), fed by the `ldapapp-<app_id>`
-- streams. A removed app keeps its row (removed, no credential) so the stream's version is
-- known when the app is registered again.
--
-- Like the groups (0002), no foreign keys: triggers drop a deleted user or group from the
-- access lists, and a rebuild (TRUNCATE identity.users) empties this table too.

CREATE TABLE identity.ldap_apps (
    app_id          text PRIMARY KEY,
    password_hash   text,                      -- SHA-256 hex of the random password; NULL once removed
    all_users       boolean NOT NULL DEFAULT false,
    user_ids        uuid[] NOT NULL DEFAULT '{}',
    group_ids       uuid[] NOT NULL DEFAULT '{}',
    registered_at   timestamptz NOT NULL,      -- first registration since the last removal
    password_set_at timestamptz NOT NULL,
    removed         boolean NOT NULL DEFAULT false,
    version         integer NOT NULL           -- the version of the app's stream
);

CREATE FUNCTION identity.ldap_apps_user_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE identity.ldap_apps SET user_ids = array_remove(user_ids, OLD.user_id)
        WHERE OLD.user_id = ANY (user_ids);
    RETURN NULL;
END $$;

CREATE TRIGGER users_gone_from_ldap_apps AFTER DELETE ON identity.users
    FOR EACH ROW EXECUTE FUNCTION identity.ldap_apps_user_gone();

CREATE FUNCTION identity.ldap_apps_group_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE identity.ldap_apps SET group_ids = array_remove(group_ids, OLD.group_id)
        WHERE OLD.group_id = ANY (group_ids);
    RETURN NULL;
END $$;

CREATE TRIGGER groups_gone_from_ldap_apps AFTER DELETE ON identity.groups
    FOR EACH ROW EXECUTE FUNCTION identity.ldap_apps_group_gone();

CREATE FUNCTION identity.ldap_apps_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE identity.ldap_apps;
    RETURN NULL;
END $$;

CREATE TRIGGER users_truncated_ldap_apps AFTER TRUNCATE ON identity.users
    FOR EACH STATEMENT EXECUTE FUNCTION identity.ldap_apps_truncated();
