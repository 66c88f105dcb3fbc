<?php
// Homeport: writes DokuWiki's sign-in and path settings from the app's environment.
// Usage: php configure.php <output file>. Values go through var_export, so no quoting bugs.

function need(string $name): string {
    $value = getenv($name);
    if ($value === false || $value === '') {
        fwrite(STDERR, "dokuwiki: $name is not set: the app needs the ldap addon\n");
        exit(1);
    }
    return $value;
}

$out = $argv[1] ?? '';
if ($out === '') {
    fwrite(STDERR, "usage: php configure.php <output file>\n");
    exit(2);
}

$settings = [
    ['savedir'], '/app/data/data',
    ['updatecheck'], 0,
    ['useacl'], 1,
    ['authtype'], 'authldap',
    // members of the platform group "admins" administer the wiki
    ['superuser'], '@admins',
    ['manager'], '@admins',
    ['disableactions'], 'register,resendpwd',
    ['plugin', 'authldap', 'server'], need('HOMEPORT_LDAP_HOST'),
    ['plugin', 'authldap', 'port'], (int) need('HOMEPORT_LDAP_PORT'),
    ['plugin', 'authldap', 'version'], 3,
    ['plugin', 'authldap', 'starttls'], 0,
    ['plugin', 'authldap', 'referrals'], 0,
    ['plugin', 'authldap', 'binddn'], need('HOMEPORT_LDAP_BIND_DN'),
    // conf_decodeString() form, so any byte of the password survives
    ['plugin', 'authldap', 'bindpw'], '<b>' . base64_encode(need('HOMEPORT_LDAP_BIND_PASSWORD')),
    ['plugin', 'authldap', 'usertree'], need('HOMEPORT_LDAP_USERS_BASE_DN'),
    ['plugin', 'authldap', 'grouptree'], need('HOMEPORT_LDAP_GROUPS_BASE_DN'),
    ['plugin', 'authldap', 'userfilter'], '(&(uid=%{user})(objectClass=inetOrgPerson))',
    ['plugin', 'authldap', 'groupfilter'], '(&(objectClass=groupOfNames)(member=%{dn}))',
    ['plugin', 'authldap', 'userscope'], 'one',
    ['plugin', 'authldap', 'groupscope'], 'one',
    ['plugin', 'authldap', 'userkey'], 'uid',
    ['plugin', 'authldap', 'groupkey'], 'cn',
    ['plugin', 'authldap', 'modPass'], 0,
];
$origin = getenv('HOMEPORT_APP_ORIGIN');
if ($origin !== false && $origin !== '') {
    array_push($settings, ['baseurl'], rtrim($origin, '/'), ['basedir'], '/');
}

$php = "<?php\n// Written by /usr/local/lib/homeport/configure.php at start; do not edit.\n";
for ($i = 0; $i < count($settings); $i += 2) {
    $key = implode('', array_map(fn ($k) => '[' . var_export($k, true) . ']', $settings[$i]));
    $php .= '$conf' . $key . ' = ' . var_export($settings[$i + 1], true) . ";\n";
}
$tmp = $out . '.tmp';
if (file_put_contents($tmp, $php) === false || !chmod($tmp, 0600) || !rename($tmp, $out)) {
    fwrite(STDERR, "dokuwiki: cannot write $out\n");
    exit(1);
}
