<?php
// Homeport: Roundcube's settings, made from the environment the platform gives the app
// (services/apps/DESIGN.md: the postgresql and mailclient addons). People sign in with their
// own Homeport account: Roundcube passes the name and password on to IMAP, submission and
// ManageSieve, which the mail service checks.

$homeport = static function (string $name, string $default = ''): string {
    $value = getenv($name);
    return $value === false ? $default : $value;
};

$config = [];

$config['db_dsnw'] = sprintf(
    'pgsql://%s:%s@%s:%s/%s',
    rawurlencode($homeport('HOMEPORT_POSTGRESQL_USERNAME')),
    rawurlencode($homeport('HOMEPORT_POSTGRESQL_PASSWORD')),
    $homeport('HOMEPORT_POSTGRESQL_HOST'),
    $homeport('HOMEPORT_POSTGRESQL_PORT', '5432'),
    rawurlencode($homeport('HOMEPORT_POSTGRESQL_DATABASE'))
);

// Plain IMAP and submission on the services network (the host's own bridge): the mail service
// takes sign-ins there only from this app's network. Should it offer STARTTLS, it is used,
// without checking the name (the certificate is for the mail host, not this address).
$tls = ['ssl' => ['verify_peer' => false, 'verify_peer_name' => false]];
$config['imap_host'] = $homeport('HOMEPORT_MAIL_IMAP_HOST') . ':' . $homeport('HOMEPORT_MAIL_IMAP_PORT', '143');
$config['imap_conn_options'] = $tls;
$config['imap_auth_type'] = 'PLAIN';
$config['smtp_host'] = $homeport('HOMEPORT_MAIL_SUBMISSION_HOST') . ':' . $homeport('HOMEPORT_MAIL_SUBMISSION_PORT', '587');
$config['smtp_conn_options'] = $tls;
$config['smtp_user'] = '%u';
$config['smtp_pass'] = '%p';
$config['smtp_auth_type'] = 'PLAIN';

// A person's address is their username at the platform's first mail domain.
$domain = $homeport('HOMEPORT_MAIL_DOMAIN');
if ($domain !== '') {
    $config['mail_domain'] = $domain;
}

$config['des_key'] = trim((string) @file_get_contents('/app/data/des_key'));
$config['cipher_method'] = 'AES-256-CBC';

$config['plugins'] = ['homeport', 'managesieve', 'archive', 'zipdownload'];
$config['product_name'] = 'Webmail';
$config['skin'] = 'elastic';
$config['language'] = 'en_US';
$config['enable_installer'] = false;
$config['temp_dir'] = '/tmp/roundcube/';
$config['log_driver'] = 'stdout';
$config['session_lifetime'] = 30;
$config['ip_check'] = true;
$config['login_rate_limit'] = 3;
$config['x_frame_options'] = 'sameorigin';
$config['identities_level'] = 0;
$config['support_url'] = '';
$config['useragent'] = 'Roundcube Webmail';
// Homeport's edge is the only client of this container (its port is published on loopback):
// it sets X-Forwarded-Proto and X-Real-IP itself, dropping what a browser sent.
$config['use_https'] = false;
$config['proxy_whitelist'] = [];
