"""Folders shared with a reader group (a server install, deploy/units.py `READER_GROUPS`).

A folder one service writes and another reads belongs to a group the reader is in, is readable
by that group and setgid, so what the writer makes there takes the group by itself (a unit
may neither chown nor set a setgid bit). The writer only has to make its files group-readable
there: `shares_with_group(folder)` says whether `folder` is such a folder — readable by a
group that is not the process's own. Elsewhere (an embedded stack, a test's temporary folder)
files stay the owner's alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["shares_with_group"]


def shares_with_group(folder: Path) -> bool:
    """Whether what is made in `folder` should be readable by its group (see above); False
    when the folder cannot be looked at."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return bool(st.st_mode & stat.S_IRGRP) and st.st_gid != os.getegid()
