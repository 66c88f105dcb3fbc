-- The log's filter indexes key on the 32-bit hash of the text they filter (hashtext, the
-- function advisory-lock keys are commonly made with) then the position, instead of the text
-- itself: a filtered page reads `hashtext(col) = hashtext($1) AND col = $1` (queries.py), the
-- second term dropping the rows of another value with the same hash. Most rows share their
-- actor, type, stream or category with many others, so building such an index is mostly
-- comparing equal texts and then the positions behind them; an integer first key is compared
-- and read at a fixed offset: each index of a 1M-row log builds in ~0.6-0.8 s instead of
-- ~1.0-1.2 (a rebuild makes them again, projections.py `_INDEXES`).
DROP INDEX gateway.activity_actor;
DROP INDEX gateway.activity_type;
DROP INDEX gateway.activity_stream;
DROP INDEX gateway.activity_category;
CREATE INDEX activity_actor ON gateway.activity (hashtext(actor), position);
CREATE INDEX activity_type ON gateway.activity (hashtext(type), position);
CREATE INDEX activity_stream ON gateway.activity (hashtext(stream), position);
CREATE INDEX activity_category ON gateway.activity (hashtext(category), position);
