"""The operator API: one application layer under every front end.

``Identity`` (who asks), ``Outcome`` (an OPC UA status code, a message, data), the role
matrix (:mod:`.roles`) and :class:`Operations` (every action: check role and areas, validate,
perform, audit, answer). See ``docs/architecture.md`` ("Operator API").
"""

from .identity import SERVER, Identity, OperationError, Outcome
from .roles import ACTIONS, ROLES, Action, action, allows
from .service import Operations, read_demo_users

__all__ = ["ACTIONS", "ROLES", "SERVER", "Action", "Identity", "OperationError", "Operations", "Outcome",
           "action", "allows", "read_demo_users"]
