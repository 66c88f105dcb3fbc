"""The wire contract of the dns service: domains with their provider, records Homeport owns,
ACME TXT values.

Callers: the gateway (domains: add, list, verify, remove), the apps service (`domain`, and
`set_record` / `wait_record` / `remove_record` for an app's host), the edge (`domains`,
`set_record` for the dashboard's host) and the certs service (`publish_txt` / `remove_txt` for
DNS-01). The service checks what only it knows: the provider's own settings of each kind (and
the provider itself), IP versions, record names in canonical form, which domain holds a name,
who owns a record. The mail service asks `served` (what the authoritative nameservers answer
for its records) when its domain view is asked for.
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.schema import array, integer, nullable, obj, string

__all__ = [
    "CONTRACT",
    "DOMAIN",
    "MAX_DEADLINE",
    "MAX_DOMAIN",
    "MAX_SERVED",
    "MAX_TTL",
    "MAX_VALUE",
    "MAX_VALUES",
    "OWNER",
    "PROVIDER",
    "PROVIDER_KINDS",
]

MAX_DOMAIN = 128  # the id part of the stream name `domain-<domain>` holds at most 128
MAX_VALUES = 100
MAX_VALUE = 4096
MAX_TTL = 7 * 24 * 3600
MAX_DEADLINE = 600
MAX_SERVED = 20  # records one `served` query asks about (all at once, each for ~2 s at most)
PROVIDER_KINDS = ("powerdns", "route53", "manual", "wildcard")

DOMAIN = string(
    pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$",
    maxLength=MAX_DOMAIN,
    description="a lower-case domain name, e.g. example.com",
)
OWNER = string(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$",
    description="who the record is for (1 to 100 letters, digits, '_', '.', ':' or '-'), "
    "e.g. app-4f1c or acme",
)
_NAME = string(maxLength=300, description="a DNS name such as blog.example.com ('*.' only first)")
_VALUE = string(
    minLength=1,
    maxLength=MAX_VALUE,
    pattern=r"^[^\x00]*$",
    description=f"text of 1 to {MAX_VALUE} characters",
)
_VALUES = array(_VALUE, minItems=1, maxItems=MAX_VALUES)
_TYPE = string(maxLength=16, description="A, AAAA, CNAME, TXT, MX or CAA")
_SETTING = nullable(string(maxLength=1024))

# Every setting of every kind; which ones a kind takes is the service's to say (it names the
# setting a kind does not take).
PROVIDER = obj(
    {
        "kind": string(enum=list(PROVIDER_KINDS)),
        "zone": _SETTING,
        "nameservers": nullable(
            array(
                {"type": ["string", "array"], "maxLength": 64, "maxItems": 2},
                minItems=1,
                maxItems=16,
                description='authoritative servers to check, e.g. ["192.0.2.1:53"]',
            )
        ),
        "api_url": _SETTING,
        "api_key": _SETTING,
        "server_id": _SETTING,
        "access_key_id": _SETTING,
        "secret_access_key": _SETTING,
        "hosted_zone_id": _SETTING,
        "region": _SETTING,
        "endpoint_url": _SETTING,
    },
    required=["kind"],
    description="the DNS provider that keeps the zone, and its settings",
)

_BY_DOMAIN = obj({"domain": DOMAIN}, required=["domain"])

CONTRACT = Contract(
    "dns",
    commands={
        "add_domain": obj(
            {
                "domain": DOMAIN,
                "provider": PROVIDER,
                "server_ipv4": nullable(string(maxLength=15)),
                "server_ipv6": nullable(string(maxLength=45)),
            },
            required=["domain", "provider"],
        ),
        "verify_domain": _BY_DOMAIN,
        "remove_domain": _BY_DOMAIN,
        "set_record": obj(
            {
                "name": _NAME,
                "type": _TYPE,
                "values": _VALUES,
                "ttl": nullable(integer(minimum=1, maximum=MAX_TTL, description="default 300")),
                "owner": OWNER,
            },
            required=["name", "type", "values", "owner"],
        ),
        "remove_record": obj(
            {"name": _NAME, "type": _TYPE, "owner": OWNER}, required=["name", "type", "owner"]
        ),
        "wait_record": obj(
            {
                "name": _NAME,
                "type": _TYPE,
                "values": _VALUES,
                "deadline_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DEADLINE},
            },
            required=["name", "type", "values", "deadline_s"],
        ),
        # ACME DNS-01: one value added to (removed from) the TXT set at `name`.
        "publish_txt": obj({"name": _NAME, "value": _VALUE}, required=["name", "value"]),
        "remove_txt": obj({"name": _NAME, "value": _VALUE}, required=["name", "value"]),
    },
    queries={
        "domains": obj({}),
        "domain": _BY_DOMAIN,
        # What the zone's authoritative nameservers answer for each record, asked directly.
        "served": obj(
            {
                "records": array(
                    obj(
                        {
                            "name": _NAME,
                            "type": _TYPE,
                            # the values the caller expects: the answer says if they are `same`
                            "expected": _VALUES,
                        },
                        required=["name", "type"],
                    ),
                    minItems=1,
                    maxItems=MAX_SERVED,
                    description=f"1 to {MAX_SERVED} records to look up",
                )
            },
            required=["records"],
        ),
    },
)
