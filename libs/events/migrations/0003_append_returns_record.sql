-- An append on the caller's connection returns everything a committed event holds besides what
-- the caller sent (position, version, recorded_at, chain hash), and may take a projection's
-- shared advisory lock first: an inline append (inline.py) is then one round trip instead of
-- three (lock, append, read back). Same lock order and chain as 0001.
DROP FUNCTION events.append(text, integer, uuid[], text[], integer[], jsonb[], jsonb[]);

CREATE FUNCTION events.append(
    p_stream text, p_expected integer, p_ids uuid[], p_types text[], p_schemas integer[],
    p_data jsonb[], p_meta jsonb[], p_lock bigint DEFAULT NULL
) RETURNS TABLE (out_position bigint, out_version integer, out_recorded_at timestamptz,
                 out_hash bytea) LANGUAGE plpgsql AS $$
DECLARE
    v_head    bigint;
    v_hash    bytea;
    v_current integer;
    v_n       integer := coalesce(array_length(p_ids, 1), 0);
BEGIN
    -- A projection's lock before the head's, as every inline writer takes them (no deadlock
    -- with a rebuild, which holds the projection's lock exclusively).
    IF p_lock IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(p_lock);
    END IF;
    -- The lock: every append takes it first and keeps it until its transaction ends.
    SELECT h.position, h.hash INTO v_head, v_hash FROM events.head h FOR UPDATE;
    SELECT s.version INTO v_current FROM events.streams s WHERE s.stream = p_stream;
    v_current := coalesce(v_current, 0);
    IF p_expected IS NOT NULL AND p_expected <> v_current THEN
        RAISE EXCEPTION 'stream % is at version %, expected %', p_stream, v_current, p_expected
            USING ERRCODE = 'HP409', DETAIL = v_current::text;
    END IF;
    FOR i IN 1 .. v_n LOOP
        out_position := v_head + i;
        out_version := v_current + i;
        v_hash := sha256(v_hash || events.canonical(out_position, p_ids[i], p_stream,
            out_version, p_types[i], p_schemas[i], p_data[i], p_meta[i]));
        out_hash := v_hash;
        INSERT INTO events.events (position, id, stream, version, type, schema, data, meta, hash)
        VALUES (out_position, p_ids[i], p_stream, out_version, p_types[i], p_schemas[i],
                p_data[i], p_meta[i], v_hash)
        RETURNING recorded_at INTO out_recorded_at;
        RETURN NEXT;
    END LOOP;
    IF v_n > 0 THEN
        UPDATE events.head SET position = v_head + v_n, hash = v_hash;
        INSERT INTO events.streams (stream, version) VALUES (p_stream, v_current + v_n)
            ON CONFLICT (stream) DO UPDATE SET version = excluded.version;
        PERFORM pg_notify('hp_events', (v_head + v_n)::text);
    END IF;
END
$$;
