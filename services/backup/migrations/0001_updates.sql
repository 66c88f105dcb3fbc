-- Pre-update snapshots the apps service took (AppSnapshotTaken reason "update"): each is stored
-- as a backup on the target once one is set up; `state` says how far that got.
CREATE TABLE backup.updates (
    app_id      text NOT NULL,
    snapshot_id text NOT NULL,
    manifest_id text NOT NULL,
    version     text NOT NULL,
    taken_at    timestamptz NOT NULL,
    state       text NOT NULL DEFAULT 'pending',  -- pending | queued | stored | local | gone | failed
    backup_id   text,
    PRIMARY KEY (app_id, snapshot_id)
);
CREATE INDEX updates_pending ON backup.updates (state) WHERE state IN ('pending', 'queued');
