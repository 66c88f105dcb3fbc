-- Where the edge reaches each app: its container's address in a network of the app subnet pool
-- and its HTTP port (<ip>:<port>); NULL: 127.0.0.1:<http_port> (services/apps/subnets.py).
ALTER TABLE apps.apps ADD COLUMN upstream text;
