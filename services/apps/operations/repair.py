"""repair: the failed operation of an app in error, tried again from the step that failed.

A repair has no table of its own: `AppRepairRequested` puts the failed operation back in
progress under a new task (services/apps/state.py), and `operation_of` gives that operation's
table. Its steps recorded before the failure are read back, not redone, so only the failed step
and those after it run (a failed install's image is not built again). A run interrupted by a
crash is resumed the same way.
"""

from __future__ import annotations

from services.apps.operations.base import Operation
from services.apps.operations.clone import CLONE
from services.apps.operations.configure import CONFIGURE
from services.apps.operations.install import INSTALL
from services.apps.operations.rebuild import REBUILD
from services.apps.operations.restore import RESTORE
from services.apps.operations.uninstall import UNINSTALL
from services.apps.operations.update import UPDATE
from services.apps.state import AppState

__all__ = ["OPERATIONS", "operation_of"]

OPERATIONS: dict[str, Operation] = {
    op.kind: op for op in (INSTALL, CONFIGURE, UPDATE, RESTORE, REBUILD, UNINSTALL)
}


def operation_of(s: AppState, kind: str | None = None) -> Operation:
    """The table of the app's operation in progress (or of `kind`); a clone is an install
    whose request names its source (an app, or a backup's folder: `from_snapshot`)."""
    if kind is None:
        assert s.operation is not None
        kind = s.operation.kind
    if kind == "install" and (s.clone_of is not None or s.from_snapshot is not None):
        return CLONE
    return OPERATIONS[kind]
