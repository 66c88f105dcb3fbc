"""DNS providers: the port in `base` (Record, DnsProvider, errors), one adapter module per
provider (powerdns, route53, manual, wildcard), and `factory.make_provider`.

Import from the modules themselves; this package imports nothing, so `services.dns.propagation`
and the adapters can depend on `base` without a cycle.
"""
