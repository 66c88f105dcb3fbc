-- Tasks (long work, libs/events/tasks.py): the current state of each, and each of its steps.
-- A step's position is the event's position in the store, so a client that has seen step N
-- resumes with "position > N" (the SSE Last-Event-ID).
CREATE TABLE gateway.tasks (
    task_id     uuid PRIMARY KEY,
    kind        text NOT NULL,
    title       text NOT NULL,
    owner       text NOT NULL,
    target      text,
    state       text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    percent     smallint NOT NULL CHECK (percent BETWEEN 0 AND 100),
    message     text NOT NULL,
    result      jsonb,
    error_code  text,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX tasks_owner ON gateway.tasks (owner, started_at);

CREATE TABLE gateway.task_steps (
    position    bigint PRIMARY KEY,
    task_id     uuid NOT NULL REFERENCES gateway.tasks (task_id) ON DELETE CASCADE,
    step        text NOT NULL CHECK (step IN ('progress', 'succeeded', 'failed')),
    percent     smallint NOT NULL CHECK (percent BETWEEN 0 AND 100),
    message     text NOT NULL,
    result      jsonb,
    error_code  text,
    occurred_at timestamptz NOT NULL
);
CREATE INDEX task_steps_task ON gateway.task_steps (task_id, position);
