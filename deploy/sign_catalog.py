"""Sign the bundled catalog in place: `python -m deploy.sign_catalog KEY [--keygen]`.

Writes `services/apps/bundled/index.json` (entry paths relative to it), `index.json.sig` and
the public half `catalog-signing.pub`, then loads the result with the shipped public key and
re-hashes every entry, as the apps service does at start. KEY is the Ed25519 private key (PEM)
kept OUTSIDE the repository; `--keygen` makes a new one there first (then every install must
get the new public key, which ships with the code). Run it again after any change to a bundled
app (manifest, build context or icon), or the apps service refuses that entry at start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.apps.catalog import (
    BUNDLED_PUBLIC_KEY,
    Catalog,
    CatalogError,
    generate_key,
    key_fingerprint,
    load_private_key,
    load_public_key,
    public_key_text,
    publish,
)
from services.apps.config import BUNDLED_CATALOG
from services.apps.manifest import ManifestError

__all__ = ["main", "sign_bundled"]


def sign_bundled(key_path: Path, *, keygen: bool = False, source: Path = BUNDLED_CATALOG) -> str:
    """Sign `source` in place with the key at `key_path`; a line saying what was signed."""
    if (key_path.resolve()).is_relative_to(Path(__file__).resolve().parents[1]):
        raise CatalogError(f"{key_path} is inside the repository: keep the private key outside")
    key = generate_key(key_path) if keygen else load_private_key(key_path)
    pub = source / BUNDLED_PUBLIC_KEY.name
    pub.write_text(public_key_text(key))
    publish(source, source, key, relative=True)
    catalog = Catalog.load(source, [load_public_key(pub)])
    if len(catalog.checked().entries) != len(catalog.entries):
        raise CatalogError("an entry changed while it was signed: run it again")
    names = ", ".join(f"{e.app_id} {e.version}" for e in catalog.entries)
    return f"signed {len(catalog.entries)} entries ({names}) with {key_fingerprint(key)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.sign_catalog", description=__doc__)
    parser.add_argument("key", type=Path, help="the Ed25519 private key (PEM), outside the repo")
    parser.add_argument("--keygen", action="store_true", help="make a new key at KEY first")
    args = parser.parse_args(argv)
    try:
        print(sign_bundled(args.key, keygen=args.keygen))
    except (CatalogError, ManifestError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
