-- The event store. Appends are serialised by a row lock on events.head that is held until
-- commit, so commit order equals position order: a reader that follows `position` never skips
-- an event that commits later with a lower position (there is none). See store.py.
CREATE SCHEMA IF NOT EXISTS events;

CREATE TABLE events.events (
    position    bigint PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    stream      text NOT NULL,
    version     integer NOT NULL CHECK (version >= 1),
    type        text NOT NULL,
    schema      integer NOT NULL CHECK (schema >= 1),
    data        jsonb NOT NULL,
    meta        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    hash        bytea NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX events_type_idx ON events.events (type, position);

CREATE TABLE events.streams (
    stream  text PRIMARY KEY,
    version integer NOT NULL
);

CREATE TABLE events.head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint NOT NULL,
    hash      bytea NOT NULL
);
INSERT INTO events.head VALUES (true, 0, decode(repeat('00', 32), 'hex'));

-- What the chain hashes: the event's fields as jsonb text, which Postgres renders the same way
-- every time (keys sorted, whitespace fixed), so verification can recompute it from the row.
CREATE FUNCTION events.canonical(
    p_position bigint, p_id uuid, p_stream text, p_version integer, p_type text,
    p_schema integer, p_data jsonb, p_meta jsonb
) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT convert_to(jsonb_build_object(
        'position', p_position, 'id', p_id, 'stream', p_stream, 'version', p_version,
        'type', p_type, 'schema', p_schema, 'data', p_data, 'meta', p_meta)::text, 'UTF8')
$$;

-- Append events to one stream atomically. Raises SQLSTATE HP409 when the stream is not at
-- p_expected (NULL: any version). Returns the position and version of each event.
CREATE FUNCTION events.append(
    p_stream text, p_expected integer, p_ids uuid[], p_types text[], p_schemas integer[],
    p_data jsonb[], p_meta jsonb[]
) RETURNS TABLE (out_position bigint, out_version integer) LANGUAGE plpgsql AS $$
DECLARE
    v_head    bigint;
    v_hash    bytea;
    v_current integer;
    v_n       integer := coalesce(array_length(p_ids, 1), 0);
BEGIN
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
        INSERT INTO events.events (position, id, stream, version, type, schema, data, meta, hash)
        VALUES (out_position, p_ids[i], p_stream, out_version, p_types[i], p_schemas[i],
                p_data[i], p_meta[i], v_hash);
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

-- Where the relay has published up to (the stream in JetStream is checked against it at start).
CREATE TABLE events.relay_checkpoint (
    name     text PRIMARY KEY,
    position bigint NOT NULL
);
