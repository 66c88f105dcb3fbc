-- Group commit: many independent appends (each with its own stream and expected version) in
-- one call and one transaction, so concurrent writers share one commit (one WAL flush).
-- Appends are applied in array order, as if one after the other; one that fails (version
-- conflict, duplicate event id) leaves no trace and does not stop the others. The same head
-- row lock as events.append keeps commit order equal to position order.
-- Returns one row per event of a successful append, one row per failed append (out_error set).
CREATE FUNCTION events.append_many(
    p_streams text[], p_expected integer[], p_counts integer[],
    p_ids uuid[], p_types text[], p_schemas integer[], p_data jsonb[], p_meta jsonb[]
) RETURNS TABLE (out_append integer, out_position bigint, out_version integer,
                 out_error text) LANGUAGE plpgsql AS $$
DECLARE
    v_head    bigint;
    v_hash    bytea;
    v_pos     bigint;
    v_h       bytea;
    v_current integer;
    v_n       integer;
    v_start   integer := 0;
    v_failed  text;
    v_any     boolean := false;
BEGIN
    SELECT h.position, h.hash INTO v_head, v_hash FROM events.head h FOR UPDATE;
    FOR a IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        v_n := p_counts[a];
        v_failed := NULL;
        SELECT s.version INTO v_current FROM events.streams s WHERE s.stream = p_streams[a];
        v_current := coalesce(v_current, 0);
        IF p_expected[a] IS NOT NULL AND p_expected[a] <> v_current THEN
            v_failed := 'conflict';
        ELSE
            v_pos := v_head;
            v_h := v_hash;
            BEGIN
                FOR i IN 1 .. v_n LOOP
                    v_pos := v_pos + 1;
                    v_h := sha256(v_h || events.canonical(v_pos, p_ids[v_start + i],
                        p_streams[a], v_current + i, p_types[v_start + i],
                        p_schemas[v_start + i], p_data[v_start + i], p_meta[v_start + i]));
                    INSERT INTO events.events
                        (position, id, stream, version, type, schema, data, meta, hash)
                    VALUES (v_pos, p_ids[v_start + i], p_streams[a], v_current + i,
                        p_types[v_start + i], p_schemas[v_start + i], p_data[v_start + i],
                        p_meta[v_start + i], v_h);
                END LOOP;
                INSERT INTO events.streams (stream, version) VALUES (p_streams[a], v_current + v_n)
                    ON CONFLICT (stream) DO UPDATE SET version = excluded.version;
            EXCEPTION WHEN unique_violation THEN
                v_failed := 'duplicate: ' || SQLERRM;
            END;
        END IF;
        IF v_failed IS NULL THEN
            FOR i IN 1 .. v_n LOOP
                out_append := a;
                out_position := v_head + i;
                out_version := v_current + i;
                out_error := NULL;
                RETURN NEXT;
            END LOOP;
            v_head := v_pos;
            v_hash := v_h;
            v_any := true;
        ELSE
            out_append := a;
            out_position := NULL;
            out_version := v_current;
            out_error := v_failed;
            RETURN NEXT;
        END IF;
        v_start := v_start + v_n;
    END LOOP;
    IF v_any THEN
        UPDATE events.head SET position = v_head, hash = v_hash;
        PERFORM pg_notify('hp_events', v_head::text);
    END IF;
END
$$;
