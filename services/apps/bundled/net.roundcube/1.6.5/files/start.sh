#!/bin/sh
# Homeport: Roundcube's one secret (the key it encrypts the IMAP password in the session with)
# is made on first start and kept on the volume; the database schema is created or updated at
# each start; then lighttpd serves it.
set -eu
mkdir -p /tmp/roundcube
if [ ! -s /app/data/des_key ]; then
    umask 077
    # 24 characters, as Roundcube's DES-EDE3 key wants
    head -c 18 /dev/urandom | base64 | tr -d '\n' > /app/data/des_key.new
    mv /app/data/des_key.new /app/data/des_key
fi
php /usr/local/lib/homeport/initdb.php
exec lighttpd -D -f /etc/homeport/lighttpd.conf
