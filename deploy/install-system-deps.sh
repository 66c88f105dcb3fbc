#!/usr/bin/env bash
# Installs the Debian packages Homeport needs, only those whose program is missing.
# Quiet and quick when everything is there.
#   --server  only what a server runs (deploy/install.sh): no test or build tools
#   --list    print the packages of the chosen set (installed or not), one a line, and exit
set -euo pipefail

server=0
list=0
for arg in "$@"; do
  case "$arg" in
    --server) server=1 ;;
    --list) list=1 ;;
    *) echo "install-system-deps.sh: unknown option $arg (expected --server, --list)" >&2; exit 2 ;;
  esac
done

# program to look for => Debian package that provides it: what a server runs
declare -A need=(
  [/usr/lib/postgresql/15/bin/postgres]=postgresql-15
  [/usr/lib/postgresql/15/bin/initdb]=postgresql-15
  [/usr/bin/pg_dump]=postgresql-client-15
  [nats-server]=nats-server
  [nft]=nftables  # the firewall's ban set (tests run it inside a network namespace)
  [ip]=iproute2
  [dockerd]=docker.io  # app containers (tests start their own dockerd)
  [iptables]=iptables  # dockerd's NAT and isolation rules
  [debootstrap]=debootstrap  # the Debian base image that catalog apps build from
  [/bin/busybox]=busybox-static  # the static website app (FROM scratch) and test probes
  [nginx]=nginx-light  # the edge
  [systemd-analyze]=systemd  # runs a server install; checks its units (tests/deploy/test_units.py)
  [/etc/ssl/certs/ca-certificates.crt]=ca-certificates  # HTTPS to ACME, DNS APIs, releases
  # mail (services/mail/servers.py runs its own instances from its own configuration)
  [/usr/lib/postfix/sbin/master]=postfix
  [/usr/sbin/dovecot]=dovecot-core
  [/usr/lib/dovecot/imap]=dovecot-imapd
  [/usr/lib/dovecot/lmtp]=dovecot-lmtpd
  [/usr/lib/dovecot/managesieve]=dovecot-managesieved
  [/usr/lib/dovecot/modules/lib90_sieve_plugin.so]=dovecot-sieve
  [/usr/lib/dovecot/modules/auth/libauthdb_lua.so]=dovecot-auth-lua  # asks the mail service
  [/usr/bin/rspamd]=rspamd
)
# ... and what only a development machine needs (tests, benchmarks, the dashboard's build)
declare -A dev=(
  [/usr/bin/ldapsearch]=ldap-utils
  [wrk]=wrk  # the HTTP load generator of `make bench`
  [restic]=restic  # the baseline of the backup benchmarks (`make bench`)
  [pebble]=pebble  # the ACME test server (tests of certificates)
  [pebble-challtestsrv]=pebble
  [pdns_server]=pdns-server  # PowerDNS, a DNS provider (tests run a real one)
  [/usr/lib/x86_64-linux-gnu/pdns/libgsqlite3backend.so]=pdns-backend-sqlite3
  [node]=nodejs  # builds the dashboard (esbuild, from the npm registry)
  [npm]=npm
  [/usr/bin/chromium]=chromium  # the dashboard's browser tests (driven by Playwright)
  [swaks]=swaks  # an SMTP client: tests/mail/test_swaks.py, and trying the mail servers by hand
  [/usr/lib/x86_64-linux-gnu/perl5/5.36/Net/SSLeay.pm]=libnet-ssleay-perl  # swaks' STARTTLS
  [/usr/sbin/sshd]=openssh-server  # the firewall's tests run their own sshd (SSH bans)
  [promtool]=prometheus  # checks and unit-tests the alert rules in deploy/prometheus/
)
if ((server)); then
  need[/usr/bin/unattended-upgrade]=unattended-upgrades  # Debian's security upgrades
else
  for prog in "${!dev[@]}"; do need[$prog]=${dev[$prog]}; done
fi

if ((list)); then
  printf '%s\n' "${need[@]}" python3 python3-venv | sort -u
  exit 0
fi

missing=()
for prog in "${!need[@]}"; do
  if [[ "$prog" == /* ]]; then
    [[ -e "$prog" ]] && continue
  else
    command -v "$prog" >/dev/null 2>&1 && continue
    [[ -x "/usr/sbin/$prog" ]] && continue
  fi
  missing+=("${need[$prog]}")
done

# python3 with venv and pip (Debian splits them out of python3)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi

if ((${#missing[@]})); then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [[ $EUID -ne 0 ]]; then
    echo "missing Debian packages: $pkgs- run as root (or: sudo apt-get install $pkgs)" >&2
    exit 1
  fi
  echo "installing Debian packages: $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $pkgs >/dev/null
  # the Debian units would start system-wide servers; Homeport runs its own
  for unit in postgresql nats-server pdns nginx postfix dovecot rspamd; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
  # sshd only if this run installed it (its postinst starts it on port 22, with or without
  # systemd): a machine's own sshd, maybe the way in, stays
  if [[ " $pkgs " == *" openssh-server "* ]]; then
    service ssh stop >/dev/null 2>&1 || true
    systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
  # prometheus only for its promtool: the server its postinst starts (port 9090) is not ours
  if [[ " $pkgs " == *" prometheus "* ]]; then
    service prometheus stop >/dev/null 2>&1 || true
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi
