# acl.auth.php
# <?php exit()?>
# Who may do what, first match wins (see https://www.dokuwiki.org/acl).
# Seeded by Homeport: a closed wiki, every signed-in user may read, edit and upload.
*               @ALL          0
*               @user         8
