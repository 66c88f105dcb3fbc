-- The apps read model: one row per app ever installed (uninstalled ones stay, with their
-- location freed), and the snapshots each app has.
CREATE TABLE apps.apps (
    app_id       uuid PRIMARY KEY,
    manifest_id  text NOT NULL,
    version      text NOT NULL,
    location     text NOT NULL,
    domain       text NOT NULL,
    access       jsonb NOT NULL,
    memory_bytes bigint NOT NULL,
    state        text NOT NULL,
    running      boolean NOT NULL,
    health       text NOT NULL,
    error        text,
    task_id      uuid,
    operation    text,
    awaiting_approval boolean NOT NULL DEFAULT false,
    target_version text,
    clone_of     uuid,
    stream_version integer NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
-- A location is taken while its app exists: installing onto it fails in the same transaction
-- that would have recorded the request.
CREATE UNIQUE INDEX apps_location ON apps.apps (domain, location) WHERE state <> 'uninstalled';

CREATE TABLE apps.snapshots (
    snapshot_id  uuid PRIMARY KEY,
    app_id       uuid NOT NULL,
    manifest_id  text NOT NULL,
    version      text NOT NULL,
    reason       text NOT NULL,
    size_bytes   bigint NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX snapshots_app ON apps.snapshots (app_id, created_at);
