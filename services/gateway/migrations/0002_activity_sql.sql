-- Helpers of the activity projection's SQL (projections.py): plain expressions, so the planner
-- inlines them; cheap tests come before any regex.

-- Sealed values (hp:sealed:...) never reach the activity log.
CREATE FUNCTION gateway.unsealed_text(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN strpos(p_value, 'hp:sealed:') > 0
                THEN regexp_replace(p_value, 'hp:sealed:\S*', '[sealed]', 'g')
                ELSE p_value END
$$;

-- Runs of spaces become one space, ends trimmed (callers first turn tabs and newlines into
-- spaces with translate()).
CREATE FUNCTION gateway.one_line(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN strpos(p_value, '  ') > 0
                THEN btrim(regexp_replace(p_value, ' {2,}', ' ', 'g'), ' ')
                ELSE btrim(p_value, ' ') END
$$;

-- When: the time the store recorded the event (commit order, not a client's clock). Positions
-- and recorded times rise together, so a BRIN index serves time ranges at almost no cost.
DROP INDEX gateway.activity_time;
CREATE INDEX activity_time ON gateway.activity USING brin (occurred_at);
