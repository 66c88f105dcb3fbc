"""DockerRuntime against a real dockerd: images, containers, logs, stats, events, volumes."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from pathlib import Path

import docker
import pytest

from services.apps.container import RuntimeEvent, RuntimeFailure
from services.apps.runtime import DockerRuntime
from tests.apps.dockerkit import DockerNames, app_spec, wait_for, wait_probe_http

pytestmark = pytest.mark.timeout(60)


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("docker-stream")]


async def test_build_skips_unchanged_context_and_rebuilds_changed(
    runtime: DockerRuntime, dnames: DockerNames, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    (tmp_path / "hello.txt").write_text("one\n")
    tag = f"{dnames('img')}:1"
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)

    first = await runtime.build_image(tag, tmp_path, progress)
    assert lines, "a real build reports its steps"
    assert await runtime.image_exists(tag)

    lines.clear()
    assert await runtime.build_image(tag, tmp_path, progress) == first
    assert lines == [], "an unchanged context is not built again"

    (tmp_path / "hello.txt").write_text("two\n")
    second = await runtime.build_image(tag, tmp_path, progress)
    assert second != first and lines

    (tmp_path / "hello.txt").chmod(0o600)  # modes count too
    assert await runtime.build_image(tag, tmp_path) != second

    await runtime.remove_image(tag)
    assert not await runtime.image_exists(tag)
    await runtime.remove_image(tag)  # idempotent


async def test_failing_build_names_the_image(
    runtime: DockerRuntime, dnames: DockerNames, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY no-such-file /x\n")
    tag = f"{dnames('broken')}:1"
    with pytest.raises(RuntimeFailure) as e:
        await runtime.build_image(tag, tmp_path)
    assert tag in e.value.message and "no-such-file" in e.value.message
    assert not await runtime.image_exists(tag)


async def test_container_lifecycle_and_http_port_on_loopback_only(
    runtime: DockerRuntime,
    dnames: DockerNames,
    probe_image: str,
    docker_client: docker.DockerClient,
) -> None:
    net = await runtime.ensure_network(dnames("net"), dnames.labels)
    assert net == await runtime.ensure_network(dnames("net"), dnames.labels)
    spec = app_spec(dnames, "web", net.name, http_port=8080, env={"A": "1"})
    cid = await runtime.create_container(spec)
    assert await runtime.create_container(spec) == cid, "same spec keeps the container"
    created = await runtime.state(spec.name)
    assert created is not None and not created.running and created.exit_code is None

    await runtime.start(spec.name)
    st = await runtime.state(spec.name)
    assert st is not None and st.running and st.status == "running"
    assert st.http_host_port is not None and st.ip is not None and st.started_at

    # Published on 127.0.0.1 only: it answers there, and the binding names no other address.
    await wait_probe_http(st.http_host_port, "the app's http port answering")
    info = docker_client.api.inspect_container(spec.name)
    binds = info["HostConfig"]["PortBindings"]
    assert binds == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}

    stats = await runtime.stats(spec.name)
    assert stats.memory_bytes > 0 and stats.memory_limit == 64 << 20 and stats.cpu_seconds >= 0

    await runtime.restart(spec.name)
    again = await runtime.state(spec.name)
    assert again is not None and again.running and again.started_at != st.started_at

    await runtime.stop(spec.name, timeout=2)
    stopped = await runtime.state(spec.name)
    assert stopped is not None and not stopped.running and stopped.exit_code is not None

    changed = app_spec(dnames, "web", net.name, http_port=8080, env={"A": "2"})
    assert await runtime.create_container(changed) != cid, "changed env recreates"
    assert [c.name for c in await runtime.containers(dnames.labels)] == [spec.name]

    await runtime.remove_container(spec.name)
    await runtime.remove_container(spec.name)  # idempotent
    assert await runtime.state(spec.name) is None
    with pytest.raises(RuntimeFailure, match=spec.name):
        await runtime.start(spec.name)
    await runtime.remove_network(net.name)
    await runtime.remove_network(net.name)


async def test_logs_tail_and_follow(
    runtime: DockerRuntime, dnames: DockerNames, probe_image: str
) -> None:
    net = await runtime.ensure_network(dnames("net"), dnames.labels)
    spec = app_spec(
        dnames, "talk", net.name, run="i=0; while :; do echo line-$i; i=$((i+1)); sleep 0.2; done"
    )
    await runtime.create_container(spec)
    await runtime.start(spec.name)

    async def enough() -> bool:
        return len(await runtime.logs(spec.name, tail=100)) >= 4

    await wait_for("four log lines", enough)
    tail = await runtime.logs(spec.name, tail=3)
    assert len(tail) == 3 and all(line.startswith("line-") for line in tail)

    follow = runtime.follow_logs(spec.name)
    line = await asyncio.wait_for(anext(follow), 10)
    n = int(line.removeprefix("line-"))
    assert n > int(tail[-1].removeprefix("line-")), "tail=0 gives new lines only"
    assert await asyncio.wait_for(anext(follow), 10) == f"line-{n + 1}"
    assert _stream_threads()
    await follow.aclose()
    assert not _stream_threads(), "closing the iterator ends its thread"

    # A followed log ends when the container stops.
    follow = runtime.follow_logs(spec.name, tail=1)
    assert (await asyncio.wait_for(anext(follow), 10)).startswith("line-")
    await runtime.stop(spec.name, timeout=1)

    async def drain() -> int:
        return len([x async for x in follow])

    await asyncio.wait_for(drain(), 15)
    await follow.aclose()
    assert not _stream_threads()


async def test_events_die_with_exit_code_and_oom(
    runtime: DockerRuntime, dnames: DockerNames, probe_image: str
) -> None:
    net = await runtime.ensure_network(dnames("net"), dnames.labels)
    events = runtime.events(dnames.labels)
    other = runtime.events({"homeport.test": "someone-else"})
    try:
        quits = app_spec(dnames, "quits", net.name, run="sleep 0.3; exit 3")
        await runtime.create_container(quits)
        await runtime.start(quits.name)

        async def next_of(kind: str, name: str) -> RuntimeEvent:
            async for ev in events:
                if ev.kind == kind and ev.container == name:
                    return ev
            raise AssertionError("event stream ended")

        start = await asyncio.wait_for(next_of("start", quits.name), 15)
        assert start.labels.get("homeport.test") == dnames.prefix
        die = await asyncio.wait_for(next_of("die", quits.name), 15)
        assert die.exit_code == 3
        await runtime.remove_container(quits.name)

        hog = app_spec(dnames, "hog", net.name, run="exec /bin/probe hog", memory_bytes=16 << 20)
        await runtime.create_container(hog)
        await runtime.start(hog.name)
        await asyncio.wait_for(next_of("oom", hog.name), 20)
        died = await asyncio.wait_for(next_of("die", hog.name), 20)
        assert died.exit_code == 137
        st = await runtime.state(hog.name)
        assert st is not None and (st.oom_killed or st.running)  # it may be restarting already
        await runtime.remove_container(hog.name)

        # A filter on other labels saw none of this.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(other), 0.5)
    finally:
        await events.aclose()
        await other.aclose()
    assert not _stream_threads()


def _tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else (p.read_text() if p.is_file() else "<dir>")
        out[str(p.relative_to(root))] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), body)
    return out


async def test_volumes_export_import_copy_keep_contents(
    runtime: DockerRuntime, dnames: DockerNames, tmp_path: Path
) -> None:
    await runtime.ensure_volume(dnames("data"), dnames.labels)
    path = await runtime.volume_path(dnames("data"))
    await runtime.ensure_volume(dnames("data"), dnames.labels)
    assert path == await runtime.volume_path(dnames("data")), "ensure keeps the volume"
    assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1000)
    (path / "sub").mkdir(mode=0o2750)
    (path / "sub").chmod(0o2750)
    (path / "sub" / "secret.txt").write_text("s3cret\n")
    (path / "sub" / "secret.txt").chmod(0o600)
    os.chown(path / "sub", 1000, 1000)
    os.chown(path / "sub" / "secret.txt", 1000, 1001)
    (path / "link").symlink_to("sub/secret.txt")
    before = _tree(path)

    tar = tmp_path / "data.tar"
    await runtime.export_volume(dnames("data"), tar)
    await runtime.copy_volume(dnames("data"), dnames("copy"))
    copy_path = await runtime.volume_path(dnames("copy"))
    assert _tree(copy_path) == before
    assert copy_path.stat().st_uid == 1000

    (path / "sub" / "secret.txt").write_text("changed\n")
    (path / "extra").write_text("x")
    await runtime.import_volume(dnames("data"), tar)
    assert _tree(path) == before

    await runtime.remove_volume(dnames("copy"))
    await runtime.remove_volume(dnames("copy"))
    with pytest.raises(RuntimeFailure, match=dnames("copy")):
        await runtime.export_volume(dnames("copy"), tar)


async def test_services_network_has_fixed_subnet_and_gateway(
    runtime: DockerRuntime, dnames: DockerNames
) -> None:
    subnet = f"10.{216 + os.getpid() % 4}.{int(dnames.prefix[-2:], 16)}.0/24"
    info = await runtime.ensure_services_network(dnames("svc"), subnet)
    assert info.subnet == subnet and info.gateway == subnet.replace(".0/24", ".1")
    assert await runtime.ensure_services_network(dnames("svc"), subnet) == info
    await runtime.remove_network(dnames("svc"))


async def test_unreachable_docker_is_a_runtime_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="does not answer"):
        async with DockerRuntime(f"unix://{tmp_path}/nothing.sock"):
            pass
