<?php
// Homeport: Sieve filters through the mail service's ManageSieve on the services network.
$managesieve = static function (string $name, string $default = ''): string {
    $value = getenv($name);
    return $value === false ? $default : $value;
};
// host:port, no tls:// prefix: plain on the services network, like IMAP and submission
$config['managesieve_host'] = $managesieve('HOMEPORT_MAIL_SIEVE_HOST') . ':'
    . $managesieve('HOMEPORT_MAIL_SIEVE_PORT', '4190');
$config['managesieve_auth_type'] = 'PLAIN';
$config['managesieve_conn_options'] = ['ssl' => ['verify_peer' => false, 'verify_peer_name' => false]];
$config['managesieve_script_name'] = 'roundcube';
// the mail server does not send for Sieve (vacation, redirect): no Out of Office page
$config['managesieve_vacation'] = 0;
$config['managesieve_forward'] = 0;
$config['managesieve_default'] = '';
