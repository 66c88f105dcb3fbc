-- The host ports every app holds, taken from its row for apps recorded before apps.ports came
-- (0004 made the table empty). Each append now releases and takes only the holds it changes
-- (services/apps/projections.py), so a hold missing here would otherwise stay missing. A port
-- a configuration in flight moves to is taken by its own events, as before.
INSERT INTO apps.ports (protocol, host_port, app_id)
    SELECT 'tcp', p.value::integer, a.app_id
    FROM apps.apps a, jsonb_each_text(a.tcp_ports) p
    WHERE a.state <> 'uninstalled'
    ON CONFLICT DO NOTHING;
INSERT INTO apps.ports (protocol, host_port, app_id)
    SELECT 'udp', p.value::integer, a.app_id
    FROM apps.apps a, jsonb_each_text(a.udp_ports) p
    WHERE a.state <> 'uninstalled'
    ON CONFLICT DO NOTHING;
INSERT INTO apps.locations (domain, location, app_id)
    SELECT domain, location, app_id FROM apps.apps WHERE state <> 'uninstalled'
    ON CONFLICT DO NOTHING;
