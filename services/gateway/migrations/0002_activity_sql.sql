-- The activity projection in SQL: one statement turns a page of events into activity rows,
-- for live batches, catch-up and rebuilds alike (so there is one definition of a row).

-- Sealed values (hp:sealed:...) never reach the activity log.
CREATE FUNCTION gateway.unsealed_text(p_value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(p_value, 'hp:sealed:\S*', '[sealed]', 'g')
$$;

-- A non-empty string field of meta, cleaned and cut to p_limit characters; NULL otherwise.
CREATE FUNCTION gateway.meta_text(p_meta jsonb, p_key text, p_limit integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(p_meta -> p_key) = 'string' AND p_meta ->> p_key <> ''
                THEN left(gateway.unsealed_text(p_meta ->> p_key), p_limit) END
$$;

-- meta.summary (written by the event's summary() at append time), else "<Type> on <stream>";
-- whitespace collapsed, sealed parts hidden, at most 300 characters.
CREATE FUNCTION gateway.activity_summary(p_meta jsonb, p_type text, p_stream text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN char_length(s) <= 300 THEN s ELSE left(s, 299) || '…' END
    FROM (SELECT gateway.unsealed_text(btrim(regexp_replace(
        CASE WHEN jsonb_typeof(p_meta -> 'summary') = 'string' AND p_meta ->> 'summary' ~ '\S'
             THEN p_meta ->> 'summary' ELSE p_type || ' on ' || p_stream END,
        '\s+', ' ', 'g'))) AS s) AS t
$$;

-- meta.occurred_at when it is an ISO 8601 time with a zone, else when the store recorded it.
CREATE FUNCTION gateway.occurred_at(p_meta jsonb, p_recorded timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v text := p_meta ->> 'occurred_at';
BEGIN
    IF jsonb_typeof(p_meta -> 'occurred_at') = 'string'
       AND v ~ '^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d(:?\d\d)?)$' THEN
        RETURN v::timestamptz;
    END IF;
    RETURN p_recorded;
EXCEPTION WHEN datetime_field_overflow OR invalid_datetime_format THEN
    RETURN p_recorded;
END
$$;
