-- An event's refs (the fields of its data its sentence names, 0004) are no longer kept in the
-- log's rows: a page reads its events' data and takes them there (activity_text.refs_of). A
-- rebuild of the log no longer computes them for every event (a replay: ~4 us an event of the
-- ~10 a row cost); a page of 50 rows reads 50 events by their position. The rest of each row
-- is unchanged: nothing to project again.
ALTER TABLE gateway.activity DROP COLUMN refs;
