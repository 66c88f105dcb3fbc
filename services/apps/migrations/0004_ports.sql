-- The server's ports each app publishes (manifest port name -> host port), and the ports each
-- app holds: its own, and the ones a configuration moves it to from the moment that
-- configuration is accepted (services/apps/state.py held_ports). The primary key makes a second
-- app's claim on a port fail in the transaction that would have recorded it.
ALTER TABLE apps.apps ADD COLUMN tcp_ports jsonb NOT NULL DEFAULT '{}';
ALTER TABLE apps.apps ADD COLUMN udp_ports jsonb NOT NULL DEFAULT '{}';
CREATE TABLE apps.ports (
    protocol  text NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    host_port integer NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
    app_id    uuid NOT NULL,
    CONSTRAINT apps_port_held PRIMARY KEY (protocol, host_port)
);
CREATE INDEX ports_app ON apps.ports (app_id);
