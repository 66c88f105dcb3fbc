<?php
// Written by Homeport: the sign-in settings are made from the app's environment at every
// start (/usr/local/lib/homeport/configure.php) and live in /tmp (tmpfs), never on the volume.
include '/tmp/dokuwiki/homeport.php';
