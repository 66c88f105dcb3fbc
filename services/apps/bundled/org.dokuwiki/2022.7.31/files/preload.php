<?php
// Homeport: DokuWiki's own configuration lives on the app's volume (root is read-only);
// Debian's defaults stay in /etc/dokuwiki (DOKU_MAIN_CONF). Included by inc/preload.php.
if (!defined('DOKU_CONF')) define('DOKU_CONF', '/app/data/conf/');
