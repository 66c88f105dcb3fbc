#!/bin/sh
# Homeport: DokuWiki's writable state lives on the volume (/app/data), seeded on first start
# from the package's defaults; the sign-in settings are made from the environment each start.
set -eu
seed=/usr/share/homeport/dokuwiki
conf=/app/data/conf
mkdir -p "$conf" /tmp/dokuwiki
for f in local.php acl.auth.php users.auth.php plugins.local.php; do
    [ -e "$conf/$f" ] || cp "$seed/conf/$f" "$conf/$f"
done
cp "$seed/conf/local.protected.php" "$conf/local.protected.php"
if [ ! -d /app/data/data ]; then
    rm -rf /app/data/data.seeding
    cp -R "$seed/data" /app/data/data.seeding
    mv /app/data/data.seeding /app/data/data
fi
php /usr/local/lib/homeport/configure.php /tmp/dokuwiki/homeport.php
exec lighttpd -D -f /etc/homeport/lighttpd.conf
