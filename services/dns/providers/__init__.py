"""DNS providers, to read in this order:

1. `protocol`: the port, `Record` (an RRset) and the `DnsProvider` Protocol;
2. `base`: `BaseProvider`, the generic part of every adapter (template method: zone and type
   checks, the ownership rule of `upsert`, `wait` through `services.dns.propagation`);
3. one adapter module per provider: `powerdns`, `route53` (writing through an API; `zonefile`
   holds the presentation format both speak), `manual` and `wildcard` (zones kept by hand,
   read through DNS);
4. `factory`: which settings each kind takes (and which are secret), `make_provider`.

Their errors are in `services.dns.errors` (`DnsProviderError` and its kinds). Import from the
modules themselves; this package imports nothing, so `services.dns.propagation` and the
adapters can depend on `protocol` without a cycle.
"""
