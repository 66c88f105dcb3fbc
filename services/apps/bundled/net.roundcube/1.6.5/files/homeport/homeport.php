<?php
/**
 * Homeport: tells the mail server who is signing in. Roundcube connects to IMAP from the app's
 * own network, which the mail service trusts to name the person's address (IMAP ID
 * x-originating-ip, sent before LOGIN): failed sign-ins then count against the person's
 * address, as they would from a desktop mail client, and never get the webmail itself banned.
 * The address is the one Homeport's edge put in X-Real-IP (the edge sets it, dropping what
 * the browser sent, and only the edge reaches this container's port).
 */
class homeport extends rcube_plugin
{
    public $task = 'login|mail|settings|addressbook|logout|utils';

    public function init()
    {
        $this->add_hook('storage_connect', [$this, 'storage_connect']);
    }

    public function storage_connect($args)
    {
        $ip = $_SERVER['HTTP_X_REAL_IP'] ?? '';
        if (filter_var($ip, FILTER_VALIDATE_IP) === false) {
            $ip = $_SERVER['REMOTE_ADDR'] ?? '';
        }
        if (filter_var($ip, FILTER_VALIDATE_IP) !== false) {
            $args['preauth_ident'] = ['x-originating-ip' => $ip];
        }
        return $args;
    }
}
