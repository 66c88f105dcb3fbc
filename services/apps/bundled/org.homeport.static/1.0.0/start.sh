#!/bin/sh
# Serve /app/data/www; a site without a front page gets the welcome page as its index.html.
set -eu
www=/app/data/www
mkdir -p "$www"
if [ ! -e "$www/index.html" ]; then
    cp /usr/share/homeport/welcome/index.html "$www/index.html.tmp"
    mv "$www/index.html.tmp" "$www/index.html"
fi
exec httpd -f -vv -p 8080 -h "$www"
