<?php
// Homeport health check: PHP answers, the key exists and the database takes a query.
header('Content-Type: text/plain');
define('INSTALL_PATH', '/var/lib/roundcube/');
if (!is_file('/app/data/des_key')) {
    http_response_code(503);
    echo "no key yet\n";
    exit;
}
require_once INSTALL_PATH . 'program/include/iniset.php';
$db = rcube_db::factory(rcube::get_instance()->config->get('db_dsnw'));
$db->db_connect('w');
if (!$db->is_connected() || $db->query('SELECT 1') === false) {
    http_response_code(503);
    echo "the database does not answer\n";
    exit;
}
echo "ok\n";
