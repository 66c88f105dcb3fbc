# users.auth.php
# <?php exit()?>
# Not used: users sign in through the platform's LDAP (authldap).
