<?php
// Homeport: create Roundcube's tables in the app's own Postgres on first start, bring them up
// to date on every later one (after an update of the app).
define('INSTALL_PATH', '/var/lib/roundcube/');
require_once INSTALL_PATH . 'program/include/clisetup.php';

$dir = INSTALL_PATH . 'SQL';
$db = rcmail_utils::db();
if (!in_array($db->table_name('system'), (array) $db->list_tables())) {
    rcmail_utils::db_init($dir);  // the initial schema is the current one: nothing to update
} else {
    rcmail_utils::db_update($dir, 'roundcube', null, ['errors' => true]);
}
