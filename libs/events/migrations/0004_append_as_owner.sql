-- Appends run with the rights of the event store's owner (the migrator role of
-- libs/events/roles.py on a platform): a service's own role may append through these functions
-- and read the log, but holds no INSERT, UPDATE or DELETE on its tables. The search path is
-- fixed, as every SECURITY DEFINER function's must be (the bodies name events.* in full).
ALTER FUNCTION events.append(text, integer, uuid[], text[], integer[], jsonb[], jsonb[], bigint)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION events.append_many(text[], integer[], integer[], uuid[], text[], integer[],
                                  jsonb[], jsonb[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
