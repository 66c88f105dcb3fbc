"""Read-only LDAPv3 endpoint through which apps log their users in (see server.py for the tree)."""

from services.identity.ldap.server import (
    DEFAULT_BASE_DN,
    AppAccount,
    Directory,
    DirectoryUnavailable,
    LdapGroup,
    LdapServer,
    LdapUser,
)

__all__ = [
    "DEFAULT_BASE_DN",
    "AppAccount",
    "Directory",
    "DirectoryUnavailable",
    "LdapGroup",
    "LdapServer",
    "LdapUser",
]
