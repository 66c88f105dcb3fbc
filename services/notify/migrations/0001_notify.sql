-- The notify service's read model (projections.py): the facts alerts are decided from, the
-- alerts, the notification centre and each administrator's preferences.

-- Installed apps as far as alerts care: where they are, whether they should run, and what
-- went wrong lately (event times, so a rebuild decides the same).
CREATE TABLE notify.apps (
    app_id           uuid PRIMARY KEY,
    manifest_id      text NOT NULL DEFAULT '',
    location         text NOT NULL DEFAULT '',
    domain           text NOT NULL DEFAULT '',
    installed        boolean NOT NULL DEFAULT false,
    running          boolean NOT NULL DEFAULT true,   -- what the user wants
    down_since       timestamptz,                     -- died, not back yet
    unhealthy_since  timestamptz,
    unhealthy_detail text NOT NULL DEFAULT '',
    deaths           timestamptz[] NOT NULL DEFAULT '{}',  -- the last few deaths
    oom_at           timestamptz
);

-- Certificates by primary name: when the one in force ends, and the last failed order.
CREATE TABLE notify.certs (
    primary_name    text PRIMARY KEY,
    not_after       timestamptz,
    failed_at       timestamptz,
    failed_message  text NOT NULL DEFAULT ''
);

-- Backups: whether they are scheduled (since when), the last success and the last failure.
CREATE TABLE notify.backups (
    one             boolean PRIMARY KEY DEFAULT true CHECK (one),
    scheduled       boolean NOT NULL DEFAULT false,
    scheduled_since timestamptz,
    last_success    timestamptz,
    last_failure    timestamptz,
    failure_reason  text NOT NULL DEFAULT ''
);

-- One row per condition ever alerted; `open` while it holds.
CREATE TABLE notify.alerts (
    key          text PRIMARY KEY,
    stream       text NOT NULL,
    version      integer NOT NULL,       -- of the alert's stream, as applied here
    open         boolean NOT NULL,
    category     text NOT NULL,
    severity     text NOT NULL,
    title        text NOT NULL,
    detail       text NOT NULL,
    opened_at    timestamptz NOT NULL,
    resolved_at  timestamptz
);

-- The notification centre: one row per alert opened or resolved and per notice.
CREATE TABLE notify.notifications (
    id           uuid PRIMARY KEY,        -- the id of the event that made it
    position     bigint NOT NULL UNIQUE,
    stream       text NOT NULL,
    key          text NOT NULL,
    kind         text NOT NULL,           -- opened | resolved | notice
    category     text NOT NULL,
    severity     text NOT NULL,           -- info | warning | critical
    title        text NOT NULL,
    detail       text NOT NULL,
    user_id      uuid,                    -- only for this administrator; NULL: all of them
    sealed       text[] NOT NULL DEFAULT '{}',  -- address and browser of a sign-in notice
    created_at   timestamptz NOT NULL,
    delivered    boolean NOT NULL DEFAULT false,
    mailed       integer NOT NULL DEFAULT 0,
    pushed       integer NOT NULL DEFAULT 0,
    note         text NOT NULL DEFAULT ''
);
CREATE INDEX notifications_pending ON notify.notifications (position) WHERE NOT delivered;
CREATE INDEX notifications_key ON notify.notifications (key, position);

-- Read marks: per notification, and "everything up to this position" per user.
CREATE TABLE notify.reads (
    user_id          uuid NOT NULL,
    notification_id  uuid NOT NULL,
    PRIMARY KEY (user_id, notification_id)
);
CREATE TABLE notify.read_marks (
    user_id  uuid PRIMARY KEY,
    up_to    bigint NOT NULL
);

CREATE TABLE notify.preferences (
    user_id    uuid PRIMARY KEY,
    version    integer NOT NULL,
    email      text[] NOT NULL,
    push       text[] NOT NULL,
    push_urls  text[] NOT NULL           -- sealed
);
