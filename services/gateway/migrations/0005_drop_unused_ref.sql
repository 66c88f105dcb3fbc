-- gateway.ref() (0004) was never called: activity_text.py builds each event's refs inline in
-- the projection's SQL, one expression per field.
DROP FUNCTION IF EXISTS gateway.ref(jsonb);
