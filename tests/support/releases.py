"""Platform releases in tests: a small git checkout to release, and a real HTTP server on
loopback serving a release directory."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["git_checkout", "serve_directory"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on 127.0.0.1; yields its base URL."""
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="release server", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def git_checkout(
    path: Path, files: Mapping[str, str | bytes], executable: tuple[str, ...] = ()
) -> Path:
    """A git repository at `path` with `files` written and added to the index."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True, timeout=30)
    for name, content in files.items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_text(content)
        f.chmod(0o755 if name in executable else 0o644)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, timeout=30)
    return path
