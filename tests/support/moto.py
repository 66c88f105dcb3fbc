"""moto in server mode standing in for Route 53 and S3 (AWS cannot run here), on a free port.

The fixtures `moto` and `route53_zone` (tests/dns/conftest.py) are made from
`run_moto`/`fresh_hosted_zone`.

`moto` is one server per xdist worker (session scope) with access-key checking on
(INITIAL_NO_AUTH_ACTION_COUNT): its first requests create an IAM user allowed `route53:*` and
`s3:*` and that user's access key; every later request must be signed with that key, so a wrong
key or secret fails as it would at AWS. `route53_zone` is a fresh hosted zone per test; the
backup tests (tests/backup/test_targets.py) make a fresh bucket per test.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import (
    free_udp_tcp_port,
    remove_tree,
    spawn_logged,
    started,
    stop_process,
    wait_answering,
)

__all__ = ["MotoServer", "Route53Zone", "fresh_hosted_zone", "run_moto"]

# create_user, put_user_policy, create_access_key: then every request is checked.
_UNSIGNED_SETUP_CALLS = 3
_POLICY = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["route53:*","s3:*"],'
    '"Resource":"*"}]}'
)


# moto (5.2) re-signs a GET that has no body with its parsed parameters as the payload, so every
# signed Route 53 GET fails with SignatureDoesNotMatch; sign those with the empty body that
# botocore signed. Everything else is moto as shipped.
_MOTO_MAIN = """
import sys
from moto.iam import access_control as ac
_orig = ac.IAMRequestBase._create_aws_request
def _create_aws_request(self):
    if self._method in ("GET", "HEAD", "DELETE") and not self._body:
        saved, self._data = self._data, b""
        try:
            return _orig(self)
        finally:
            self._data = saved
    return _orig(self)
ac.IAMRequestBase._create_aws_request = _create_aws_request
from moto.server import main
sys.exit(main(sys.argv[1:]))
"""


class MotoUnavailable(RuntimeError):
    """moto[server] is not installed or did not start."""


@dataclass
class MotoServer:
    workdir: Path
    port: int = 0
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = 30.0) -> None:
        try:
            importlib.import_module("moto.server")
        except ImportError as e:
            raise MotoUnavailable(f"moto[server] is not installed: {e}") from e
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_udp_tcp_port()
        env = {
            **os.environ,
            "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNSIGNED_SETUP_CALLS),
            "MOTO_PORT": str(self.port),
        }
        self._proc = spawn_logged(
            [sys.executable, "-c", _MOTO_MAIN, "-H", "127.0.0.1", "-p", str(self.port)],
            self.workdir / "moto.log",
            env=env,
        )

        def answers() -> None:
            # /moto-api/ is not an AWS action: it does not use up the unsigned calls
            with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                pass

        wait_answering(
            self._proc,
            self.workdir / "moto.log",
            answers,
            what=f"moto on {self.url}",
            deadline_s=deadline_s,
            error=MotoUnavailable,
        )
        iam = self.client("iam")
        iam.create_user(UserName="homeport")
        iam.put_user_policy(UserName="homeport", PolicyName="dns", PolicyDocument=_POLICY)
        key = iam.create_access_key(UserName="homeport")["AccessKey"]
        self.access_key_id = key["AccessKeyId"]
        self.secret_access_key = key["SecretAccessKey"]

    def client(self, service: str) -> Any:
        """A boto3 client signed with the test user's key (kept: building one is slow)."""
        import boto3

        key = (service, self.access_key_id)
        if key not in self._clients:
            self._clients[key] = boto3.client(
                service,
                endpoint_url=self.url,
                region_name="us-east-1",
                aws_access_key_id=self.access_key_id or "AKIAUNSIGNEDSETUP",
                aws_secret_access_key=self.secret_access_key or "unsigned-setup",
            )
        return self._clients[key]

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc)
        self._proc = None
        for c in self._clients.values():
            c.close()
        self._clients.clear()


@dataclass(frozen=True)
class Route53Zone:
    name: str
    hosted_zone_id: str
    server: MotoServer

    def put(self, name: str, type: str, values: list[str], ttl: int = 60) -> None:
        """Write an RRset straight through boto3 (values in zone-file syntax): foreign records."""
        self.server.client("route53").change_resource_record_sets(
            HostedZoneId=self.hosted_zone_id,
            ChangeBatch={
                "Changes": [
                    {
                        "Action": "UPSERT",
                        "ResourceRecordSet": {
                            "Name": name + ".",
                            "Type": type,
                            "TTL": ttl,
                            "ResourceRecords": [{"Value": v} for v in values],
                        },
                    }
                ]
            },
        )


def run_moto() -> Iterator[MotoServer]:
    """Body of a session fixture: a moto server, or a skip (a failure under CI=true)."""
    server = MotoServer(Path(tempfile.mkdtemp(prefix="hp-moto-")))
    try:
        yield from started(server, "moto server", MotoUnavailable)
    finally:
        remove_tree(server.workdir)


def fresh_hosted_zone(moto: MotoServer) -> Iterator[Route53Zone]:
    """Body of a fixture: a fresh hosted zone for one test, deleted at the end."""
    name = f"z{uuid.uuid4().hex[:12]}.test"
    r53 = moto.client("route53")
    zone = r53.create_hosted_zone(Name=name + ".", CallerReference=uuid.uuid4().hex)
    zone_id = zone["HostedZone"]["Id"].removeprefix("/hostedzone/")
    yield Route53Zone(name, zone_id, moto)
    sets = r53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    changes = [
        {"Action": "DELETE", "ResourceRecordSet": s} for s in sets if s["Type"] not in ("SOA", "NS")
    ]
    if changes:
        r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    r53.delete_hosted_zone(Id=zone_id)
