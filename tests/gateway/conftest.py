"""The fixtures of tests/gateway/apikit.py, for every module here."""

from tests.gateway.apikit import cast as cast
from tests.gateway.apikit import identity as identity
from tests.gateway.apikit import identity_env as identity_env
from tests.gateway.apikit import token_cast as token_cast
