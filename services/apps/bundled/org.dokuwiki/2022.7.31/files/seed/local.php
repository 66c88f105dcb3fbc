<?php
/*
 * DokuWiki settings changed in the admin's configuration manager are saved here.
 * Sign-in (LDAP) and paths are set by Homeport in local.protected.php at every start.
 */
$conf['title'] = 'Wiki';
$conf['license'] = 'cc-by-sa';
$conf['useacl'] = 1;
