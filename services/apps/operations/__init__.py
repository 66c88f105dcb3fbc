"""App lifecycle operations as declared tables, one module each: install, clone, configure,
update, restore, uninstall and repair; `driver.Driver` walks them."""

from services.apps.operations.base import Detail, Operation, Run, Step, Tools
from services.apps.operations.driver import Driver
from services.apps.operations.repair import OPERATIONS, operation_of

__all__ = ["OPERATIONS", "Detail", "Driver", "Operation", "Run", "Step", "Tools", "operation_of"]
