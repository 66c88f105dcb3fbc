-- The locations each app holds: its own, and the one a configuration moves it to from the
-- moment that configuration is accepted (services/apps/state.py held_locations). The primary
-- key makes a second app's claim fail in the transaction that would have recorded it.
CREATE TABLE apps.locations (
    domain   text NOT NULL,
    location text NOT NULL,
    app_id   uuid NOT NULL,
    CONSTRAINT apps_location_held PRIMARY KEY (domain, location)
);
CREATE INDEX locations_app ON apps.locations (app_id);
INSERT INTO apps.locations (domain, location, app_id)
    SELECT domain, location, app_id FROM apps.apps WHERE state <> 'uninstalled'
    ON CONFLICT DO NOTHING;
-- The locations table guards them now; the index on the rows' own location would only make a
-- rebuild depend on the order apps are written in.
DROP INDEX apps.apps_location;
