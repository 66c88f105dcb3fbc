-- The activity log reads as sentences (issue 19): each row keeps the few fields of its event's
-- data that its sentence names (activity_text.py), ids rather than names, read as names when
-- a page is shown. Sealed values never enter `refs`; a sign-in's browser string stays sealed
-- in `user_agent` (identity names its browser family when a page is read).
ALTER TABLE gateway.activity ADD COLUMN refs jsonb, ADD COLUMN user_agent text;

-- One field of an event's data as a sentence may name it: text in clear (at most 200
-- characters; a sealed one is left out), a number, a boolean, or a list's length.
CREATE FUNCTION gateway.ref(p_value jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(p_value)
               WHEN 'string' THEN CASE WHEN strpos(p_value #>> '{}', 'hp:sealed:') = 0
                                       THEN to_jsonb(left(p_value #>> '{}', 200)) END
               WHEN 'number' THEN p_value
               WHEN 'boolean' THEN p_value
               WHEN 'array' THEN to_jsonb(jsonb_array_length(p_value))
           END
$$;

-- Where an app lives (its catalog entry, location and domain) for every sentence naming it:
-- the latest install or move in its stream.
CREATE INDEX activity_app_places ON gateway.activity (stream, position)
    WHERE type IN ('AppInstallRequested', 'AppConfigureRequested');

-- Rows projected before have no refs: the log is projected again from the first event (the
-- gateway catches up at start, as `homeport replay activity` would).
TRUNCATE gateway.activity;
UPDATE gateway.checkpoints SET position = 0, updated_at = now() WHERE name = 'activity';
