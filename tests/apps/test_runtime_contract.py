"""Contract tests of the ContainerRuntime port (services/apps/container.py).

`RuntimeContract` holds what the apps service relies on of any runtime; each adapter gets a
`Test<Adapter>` subclass that provides an open runtime (`rt`), an image it can run holding
busybox and the probe (`image`, see tests/apps/dockerkit.py) and unique object names (`names`).
Everything is checked through the port itself: what a container sees is read back from its own
output, so the same tests hold for a runtime that is not Docker.
"""

from __future__ import annotations

import asyncio
import ipaddress
import tarfile
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from deploy.embedded import free_ports
from services.apps.container import (
    ContainerRuntime,
    ContainerSpec,
    EventKind,
    NetworkInfo,
    RuntimeEvent,
    RuntimeFailure,
    RuntimeNotFound,
    RuntimeStream,
)
from services.apps.runtime import DockerRuntime
from tests.apps.dockerkit import (
    DockerNames,
    connects,
    host_addresses,
    wait_for,
    wait_probe_http,
)

pytestmark = pytest.mark.timeout(60)

MB = 1 << 20

# What a container reports about itself (the probe image runs env PROBE_RUN with busybox sh).
_SELF_REPORT = """\
echo uid=$(id -u)
if (echo x > /x) 2>/dev/null; then echo root=rw; else echo root=ro; fi
if echo t > /tmp/t && echo t > /run/t; then echo tmp=rw; fi
if (echo d > /app/data/f) 2>/dev/null; then echo data=rw; fi
grep -E '^(CapEff|NoNewPrivs):' /proc/self/status | tr -d ' \t' | tr : =
echo pids=$(cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null)
echo env=$HP_SECRET
echo report-done
exec /bin/probe serve 8080
"""


def _cursor(stamp: str) -> datetime:
    """A logs cursor read back as the apps queries read it (services/apps/queries.py)."""
    when = datetime.fromisoformat(stamp)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _next_event(
    events: RuntimeStream[RuntimeEvent], kind: EventKind, name: str
) -> RuntimeEvent:
    async for ev in events:
        if ev.kind == kind and ev.container == name:
            return ev
    raise AssertionError(f"event stream ended before {kind} of {name}")


def _spec(
    names: DockerNames,
    image: str,
    what: str,
    network: str,
    run: str,
    env: Mapping[str, str] | None = None,
    memory_bytes: int = 64 * MB,
    **kw: Any,
) -> ContainerSpec:
    """A spec of the probe image running the shell command `run`."""
    return ContainerSpec(
        name=names(what),
        image=image,
        network=network,
        env={"PROBE_RUN": run, **(env or {})},
        memory_bytes=memory_bytes,
        labels=names.labels,
        **kw,
    )


class RuntimeContract:
    """What the apps service relies on of a ContainerRuntime (one subclass per adapter)."""

    @pytest.fixture
    def rt(self) -> ContainerRuntime:
        raise NotImplementedError

    @pytest.fixture
    def image(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def names(self) -> DockerNames:
        raise NotImplementedError

    @staticmethod
    async def output(rt: ContainerRuntime, name: str, marker: str) -> list[str]:
        """The container's output once a line `marker` is in it."""

        async def has_marker() -> bool:
            return marker in await rt.logs(name, tail=200)

        await wait_for(f"{marker!r} in the output of {name}", has_marker)
        return await rt.logs(name, tail=200)

    # -- images -------------------------------------------------------------------------

    async def test_build_returns_the_image_id_and_skips_an_unchanged_context(
        self, rt: ContainerRuntime, names: DockerNames, tmp_path: Path
    ) -> None:
        await rt.ping()
        (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
        (tmp_path / "hello.txt").write_text("one\n")
        tag = f"{names('img')}:1"
        lines: list[str] = []

        async def progress(line: str) -> None:
            lines.append(line)

        first = await rt.build_image(tag, tmp_path, progress)
        assert first and lines, "a build reports its steps"
        lines.clear()
        assert await rt.build_image(tag, tmp_path, progress) == first
        assert lines == [], "an unchanged context is not built again"
        (tmp_path / "hello.txt").write_text("two\n")
        assert await rt.build_image(tag, tmp_path) != first

        (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY no-such-file /x\n")
        with pytest.raises(RuntimeFailure) as e:
            await rt.build_image(f"{names('broken')}:1", tmp_path)
        assert names("broken") in e.value.message and "no-such-file" in e.value.message

    # -- networks -----------------------------------------------------------------------

    async def test_networks_are_ensured_and_removed_idempotently(
        self, rt: ContainerRuntime, names: DockerNames
    ) -> None:
        a = await rt.ensure_network(names("net-a"), names.labels)
        assert await rt.ensure_network(names("net-a"), names.labels) == a
        b = await rt.ensure_network(names("net-b"), names.labels)
        for net in (a, b):
            subnet = ipaddress.IPv4Network(net.subnet)
            assert ipaddress.IPv4Address(net.gateway) in subnet
        assert a.name == names("net-a") and b.subnet != a.subnet, "each app its own subnet"
        for name in (a.name, b.name):
            await rt.remove_network(name)
            await rt.remove_network(name)
        assert await rt.ensure_network(names("net-a"), names.labels), "created again"

        services: NetworkInfo | None = None
        last: Exception | None = None
        for _ in range(5):  # a subnet a concurrent test holds: pick another
            subnet = f"10.{216 + uuid.uuid4().int % 4}.{uuid.uuid4().int % 256}.0/24"
            try:
                services = await rt.ensure_services_network(names("svc"), subnet)
                break
            except RuntimeFailure as e:
                last = e
        assert services is not None, last
        assert services.subnet == subnet and services.gateway == subnet.replace(".0/24", ".1")
        assert await rt.ensure_services_network(names("svc"), subnet) == services
        await rt.remove_network(names("svc"))

    # -- containers ---------------------------------------------------------------------

    async def test_container_lifecycle_from_a_spec(
        self, rt: ContainerRuntime, names: DockerNames, image: str
    ) -> None:
        net = await rt.ensure_network(names("net"), names.labels)
        http_port, tcp_port = free_ports(2)
        run = "/bin/probe serve 8081 & exec /bin/probe serve 8080"
        spec = _spec(
            names, image, "web", net.name, run,
            http_port=8080, http_host_port=http_port, tcp_ports={8081: tcp_port},
        )  # fmt: skip
        cid = await rt.create_container(spec)
        assert await rt.create_container(spec) == cid, "the same spec keeps the container"
        created = await rt.state(spec.name)
        assert created is not None and created.name == spec.name
        assert not created.running and created.exit_code is None and created.started_at is None

        await rt.start(spec.name)
        st = await rt.state(spec.name)
        assert st is not None and st.running and st.status == "running" and st.started_at
        assert st.http_host_port == http_port, "the edge's upstream port is the one asked for"
        assert st.ip is not None and ipaddress.IPv4Address(st.ip) in ipaddress.IPv4Network(
            net.subnet
        )

        # HTTP on 127.0.0.1 only; a TCP port on every address.
        await wait_probe_http(http_port, "the app's http port answering on 127.0.0.1")

        async def tcp_open() -> bool:
            return await connects(net.gateway, tcp_port)

        await wait_for("the app's tcp port answering on a host address", tcp_open)
        hosts = [a for a in host_addresses(net.gateway) if not a.startswith("127.")]
        assert [h for h in hosts if await connects(h, http_port)] == []

        stats = await rt.stats(spec.name)
        assert stats.memory_limit == 64 * MB and stats.memory_bytes > 0
        assert stats.cpu_seconds >= 0

        await rt.restart(spec.name)
        again = await rt.state(spec.name)
        assert again is not None and again.running and again.started_at != st.started_at
        assert again.http_host_port == http_port, "a restart keeps the port"

        await rt.stop(spec.name, timeout=2)
        stopped = await rt.state(spec.name)
        assert stopped is not None and not stopped.running and stopped.exit_code is not None
        assert stopped.status == "exited"
        await asyncio.sleep(1.0)
        later = await rt.state(spec.name)
        assert later is not None and not later.running, "a stopped container stays stopped"

        changed = replace(spec, env={**spec.env, "A": "2"})
        assert await rt.create_container(changed) != cid, "a changed spec replaces it"
        replaced = await rt.state(spec.name)
        assert replaced is not None and not replaced.running and replaced.started_at is None

        await rt.remove_container(spec.name)
        await rt.remove_container(spec.name)  # idempotent
        assert await rt.state(spec.name) is None

    async def test_container_is_confined_as_it_sees_itself(
        self, rt: ContainerRuntime, names: DockerNames, image: str
    ) -> None:
        net = await rt.ensure_network(names("net"), names.labels)
        vol = names("data")
        await rt.ensure_volume(vol, names.labels)
        app = _spec(
            names, image, "app", net.name, _SELF_REPORT,
            env={"HP_SECRET": "s3cr=t/x"}, data_volume=vol,
        )  # fmt: skip
        root = _spec(
            names, image, "root", net.name, _SELF_REPORT,
            run_as_root=True, capabilities=("NET_BIND_SERVICE",),
        )  # fmt: skip
        for s in (app, root):
            await rt.create_container(s)
            await rt.start(s.name)

        out = await self.output(rt, app.name, "report-done")
        assert out[:8] == [
            "uid=1000",
            "root=ro",
            "tmp=rw",
            "data=rw",
            "CapEff=0000000000000000",
            "NoNewPrivs=1",
            "pids=256",
            "env=s3cr=t/x",
        ], out
        out = await self.output(rt, root.name, "report-done")
        assert out[:7] == [
            "uid=0",
            "root=ro",
            "tmp=rw",
            "CapEff=0000000000000400",  # NET_BIND_SERVICE (bit 10) and nothing else
            "NoNewPrivs=1",
            "pids=256",
            "env=",
        ], out

    async def test_data_volume_outlives_its_container_and_round_trips_through_a_tar(
        self, rt: ContainerRuntime, names: DockerNames, image: str, tmp_path: Path
    ) -> None:
        net = await rt.ensure_network(names("net"), names.labels)
        vol = names("data")
        await rt.ensure_volume(vol, names.labels)
        await rt.ensure_volume(vol, names.labels)  # idempotent
        count = "echo run >> /app/data/runs; echo runs=$(wc -l < /app/data/runs); exec sleep 600"

        async def run_once(version: str, expect: int) -> None:
            spec = _spec(names, image, "app", net.name, count, env={"V": version}, data_volume=vol)
            await rt.create_container(spec)
            await rt.start(spec.name)
            await self.output(rt, spec.name, f"runs={expect}")
            await rt.stop(spec.name, timeout=1)

        await run_once("1", 1)
        await run_once("2", 2)  # a changed spec: recreated, the volume kept
        await rt.remove_container(names("app"))
        await run_once("2", 3)  # removed and created again: the volume kept

        tar = tmp_path / "data.tar"
        await rt.export_volume(vol, tar)
        with tarfile.open(tar) as t:
            member = next(m for m in t.getmembers() if m.name.lstrip("./") == "runs")
            assert (member.uid, member.gid) == (1000, 1000)
            body = t.extractfile(member)
            assert body is not None and body.read() == b"run\n" * 3

        await rt.remove_container(names("app"))
        await rt.remove_volume(vol)
        await rt.remove_volume(vol)  # idempotent
        await rt.ensure_volume(vol, names.labels)
        await rt.import_volume(vol, tar)
        await run_once("3", 4)  # the restored volume holds the three earlier runs

    async def test_logs_by_tail_and_by_cursor_lose_and_repeat_no_line(
        self, rt: ContainerRuntime, names: DockerNames, image: str
    ) -> None:
        net = await rt.ensure_network(names("net"), names.labels)
        run = "i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.1; done"
        spec = _spec(names, image, "talk", net.name, run)
        await rt.create_container(spec)
        await rt.start(spec.name)

        async def five() -> bool:
            return len(await rt.logs(spec.name, tail=100)) >= 5

        await wait_for("five log lines", five)
        tail = await rt.logs(spec.name, tail=3)
        assert len(tail) == 3
        n = int(tail[0].removeprefix("line-"))
        assert tail == [f"line-{n}", f"line-{n + 1}", f"line-{n + 2}"]

        assert len(await rt.logs_since(spec.name, 2, None)) == 2
        first = await rt.logs_since(spec.name, 1000, None)
        seen = [line for _, line in first]
        cursor = first[-1][0]
        for _ in range(3):
            await asyncio.sleep(0.35)
            newer = await rt.logs_since(spec.name, 1000, _cursor(cursor))
            assert newer, "lines written after the cursor"
            seen += [line for _, line in newer]
            cursor = newer[-1][0]
        numbers = [int(line.removeprefix("line-")) for line in seen]
        assert numbers == list(range(len(numbers))), "every line once, in order"

        await rt.stop(spec.name, timeout=1)
        assert (await rt.logs(spec.name, tail=1))[0].startswith("line-"), "kept after a stop"

    async def test_events_of_dying_and_out_of_memory_containers(
        self, rt: ContainerRuntime, names: DockerNames, image: str
    ) -> None:
        net = await rt.ensure_network(names("net"), names.labels)
        events = rt.events(names.labels)
        other = rt.events({"homeport.test": f"{names.prefix}-nobody"})
        try:
            quits = _spec(names, image, "quits", net.name, "echo bye; sleep 0.3; exit 3")
            await rt.create_container(quits)
            await rt.start(quits.name)
            start = await asyncio.wait_for(_next_event(events, EventKind.start, quits.name), 15)
            assert isinstance(start.kind, EventKind) and start.exit_code is None
            assert {**start.labels, **names.labels} == start.labels, "the spec's labels"
            die = await asyncio.wait_for(_next_event(events, EventKind.die, quits.name), 15)
            assert die.exit_code == 3
            assert "bye" in await rt.logs(quits.name, tail=20), "its output outlives it"
            await asyncio.wait_for(_next_event(events, EventKind.start, quits.name), 15)
            await rt.remove_container(quits.name)  # (restarted by the runtime, above)

            hog = _spec(names, image, "hog", net.name, "exec /bin/probe hog", memory_bytes=16 * MB)
            await rt.create_container(hog)
            await rt.start(hog.name)
            await asyncio.wait_for(_next_event(events, EventKind.oom, hog.name), 20)
            died = await asyncio.wait_for(_next_event(events, EventKind.die, hog.name), 20)
            assert died.exit_code == 137
            await rt.remove_container(hog.name)

            with pytest.raises(TimeoutError):  # a filter on other labels saw none of this
                await asyncio.wait_for(anext(other), 0.5)
        finally:
            await events.aclose()
            await other.aclose()
        with pytest.raises(StopAsyncIteration):  # closed: it ends
            await asyncio.wait_for(anext(events), 5)

    async def test_missing_objects_are_not_found_and_removing_them_is_fine(
        self, rt: ContainerRuntime, names: DockerNames, image: str, tmp_path: Path
    ) -> None:
        name = names("absent")
        assert await rt.state(name) is None
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: rt.start(name),
            lambda: rt.stop(name),
            lambda: rt.restart(name),
            lambda: rt.logs(name),
            lambda: rt.logs_since(name, 10, None),
            lambda: rt.stats(name),
        ]
        for call in calls:
            with pytest.raises(RuntimeNotFound, match=name):
                await call()
        await rt.remove_container(name)
        await rt.remove_network(names("no-net"))
        await rt.remove_volume(names("no-vol"))
        with pytest.raises(RuntimeNotFound, match=names("no-vol")):
            await rt.export_volume(names("no-vol"), tmp_path / "x.tar")

        net = await rt.ensure_network(names("net"), names.labels)
        no_image = f"{names('no-image')}:1"
        with pytest.raises(RuntimeNotFound, match=no_image):
            await rt.create_container(_spec(names, no_image, "app", net.name, "true"))
        assert await rt.state(names("app")) is None
        with pytest.raises(RuntimeNotFound, match=names("no-net")):  # at create or at start
            await rt.create_container(_spec(names, image, "app", names("no-net"), "true"))
            await rt.start(names("app"))


class TestDockerRuntime(RuntimeContract):
    """The contract on the test dockerd (tests/conftest.py)."""

    @pytest.fixture
    def rt(self, runtime: DockerRuntime) -> ContainerRuntime:
        return runtime

    @pytest.fixture
    def image(self, probe_image: str) -> str:
        return probe_image

    @pytest.fixture
    def names(self, dnames: DockerNames) -> DockerNames:
        return dnames


def test_the_docker_adapter_has_every_method_of_the_port() -> None:
    """(mypy checks the signatures: see the end of services/apps/runtime.py.)"""
    port = {n for n, v in vars(ContainerRuntime).items() if callable(v) and n[0] != "_"}
    assert "create_container" in port and "events" in port
    assert port - set(dir(DockerRuntime)) == set()
