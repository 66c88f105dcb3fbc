-- Where the edge reaches each app: 127.0.0.1:<http_port>, kept for the app's whole life.
ALTER TABLE apps.apps ADD COLUMN http_port integer;
