-- The activity log: one row per event, newest first by position.
CREATE TABLE gateway.activity (
    position    bigint PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    actor       text NOT NULL,
    ip          text,
    type        text NOT NULL,
    stream      text NOT NULL,
    category    text NOT NULL,
    summary     text NOT NULL
);
CREATE INDEX activity_actor ON gateway.activity (actor, position);
CREATE INDEX activity_type ON gateway.activity (type, position);
CREATE INDEX activity_stream ON gateway.activity (stream, position);
CREATE INDEX activity_category ON gateway.activity (category, position);
CREATE INDEX activity_time ON gateway.activity (occurred_at);
