"""What the tests share: waiting, serving a service in the test process, and the server kits.

- `servers`: `need_server` (a missing server fails under CI=true, elsewhere skips saying why)
- `waits`: `wait_until`
- `serving`: one of our services served in the test's process until it is ready
- `bus`: a NATS connection and a relay of a test's events to its JetStream stream
- `docker`: the test dockerd (one for all runs) and how a test run finds one
- `pdns`, `moto`, `pebble`, `nginx`: PowerDNS, moto (Route 53), Pebble, nginx
- `edge`: requests to the edge as a browser sends them

Fixtures are not imported from here: conftest.py files make them from these pieces.
"""
