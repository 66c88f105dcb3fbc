#!/usr/bin/env bash
# Install Homeport on a fresh Debian 12 server, as root, from a checkout or an unpacked release:
#
#   sudo deploy/install.sh [--wheels DIR] [--release-key FILE] [--release-url URL]
#                          [--docker-host unix:///path/docker.sock]
#
# This part: the Debian packages (deploy/install-system-deps.sh --server: the one list), the
# platform's files in /opt/homeport/<version> and its venv (pip with constraints.txt; with
# --wheels offline from that wheelhouse). Then `python -m deploy.install` does the rest (users,
# Postgres, the keyring, /etc/homeport, systemd units, health) and prints the setup link.
# Idempotent: run it again to repair an install.
set -euo pipefail

usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }
die() { echo "install.sh: $*" >&2; exit 1; }

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
wheels=""
args=()
while (($#)); do
  case "$1" in
    --wheels) wheels=${2:-}; [[ -d $wheels ]] || die "--wheels: ${wheels:-nothing} is not a directory"; shift 2 ;;
    --release-key|--release-url|--docker-host)
      [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
      args+=("$1" "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ $EUID -eq 0 ]] || die "run as root: sudo $0 $*"
# shellcheck disable=SC1091
ID="" VERSION_ID="" PRETTY_NAME="" && . /etc/os-release 2>/dev/null || true
[[ $ID == debian && $VERSION_ID == 12 ]] || die "Homeport installs on Debian 12 (bookworm); this is ${PRETTY_NAME:-an unknown system}"

# One installer at a time (a second one would race the first over apt, /opt/homeport/<version>,
# users and clusters): the lock is held until this script and deploy.install (exec'd below, the
# descriptor stays open) end.
lock_file=${HOMEPORT_INSTALL_LOCK:-/run/lock/homeport-install.lock}
exec 9>>"$lock_file" || die "cannot open the install lock $lock_file"
flock -n 9 || die "another install.sh is running (it holds $lock_file): wait for it to finish"

echo "==> Debian packages"
bash "$src/deploy/install-system-deps.sh" --server

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$src/pyproject.toml")
[[ $version =~ ^[0-9A-Za-z.+-]+$ ]] || die "bad version in $src/pyproject.toml: $version"
dest=/opt/homeport/$version

# A checkout has no built dashboard (a release archive has): build it as `make dashboard`
# does, with Debian's node and npm and the packages package-lock.json pins.
dash=$src/services/gateway/dashboard
if [[ -d $src/.git && ( ! -f $dash/dist/index.html || -n $(find "$dash/src" "$dash/build.mjs" \
      "$dash/package-lock.json" -newer "$dash/dist/index.html" -print -quit 2>/dev/null) ) ]]; then
  echo "==> building the dashboard (npm ci + esbuild)"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm >/dev/null
  fi
  (cd "$dash" && npm ci --no-audit --no-fund --loglevel=error && node build.mjs) ||
    die "the dashboard did not build: see the npm output above"
fi

if [[ -f $dest/.installed && -x $dest/venv/bin/python ]]; then
  echo "==> Homeport $version is in $dest already"
else
  echo "==> copying Homeport $version to $dest"
  rm -rf "$dest"
  mkdir -p "$dest"
  if [[ -d $src/.git ]] && command -v git >/dev/null; then
    # the tracked files, as a release archive holds them (deploy/release.py), and the built
    # dashboard
    { git -C "$src" ls-files -z --cached
      [[ -d $src/services/gateway/dashboard/dist ]] &&
        (cd "$src" && find services/gateway/dashboard/dist -type f -print0)
    } | (cd "$src" && tar --null --no-recursion --ignore-failed-read -T - -cf -) | tar -C "$dest" -xf -
  else  # an unpacked release: everything but what a checkout leaves around
    tar -C "$src" --exclude=./.git --exclude=./.venv --exclude=./.homeport \
      --exclude=node_modules --exclude=__pycache__ --exclude=./test-artifacts -cf - . |
      tar -C "$dest" --no-same-owner -xf -
  fi
  chown -R root:root "$dest"
  chmod -R u=rwX,go=rX "$dest"

  echo "==> its virtualenv (pip install; a few minutes)"
  python3 -m venv "$dest/venv"
  pip=("$dest/venv/bin/python" -m pip install -q --disable-pip-version-check -c "$dest/constraints.txt")
  [[ -n $wheels ]] && pip+=(--no-index --find-links "$wheels")
  (cd "$dest" && "${pip[@]}" -e "$dest")
  "$dest/venv/bin/python" -m compileall -q -x '/(venv|tests|bundled)/' "$dest" >/dev/null || true
  touch "$dest/.installed"
fi

cd "$dest"
exec "$dest/venv/bin/python" -m deploy.install --version "$version" "${args[@]}"
