"""The ``[containers]`` section of the configuration (``corex.*``/``container.*``, see
docs/containers.md).

Kept out of :mod:`core0.config` (at its size limit); it is a section like the others (a strict
schema whose unknown fields are keys) and :class:`core0.config.Config` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, ClassVar

from core0 import schema

if TYPE_CHECKING:
    from core0.registry import Role

#: the node's own bound (core0.sandbox.store.MAX_CONTAINERS; not imported: PID 1 loads the
#: configuration without the sandbox package)
_NODE_MAX = 1000


@dataclass(frozen=True)
class ContainersConfig(schema.Schema):
    """Containers (``corex.*``, see docs/containers.md)."""

    __unknown__: ClassVar[str] = "key"

    #: containers one role below admin may have at once, whichever of its queues made them
    #: (every record of the role counts: running, being created, or stopped and not yet
    #: terminated); one more corex.create is refused with 503. Admin is bounded by the
    #: node's 1000 containers only
    role_max: dict[str, Annotated[int, schema.Range(0, _NODE_MAX)]] = field(
        default_factory=lambda: {"operator": 64})

    def __post_init__(self) -> None:
        from core0.registry import Role

        for name in self.role_max:
            try:
                role = Role.parse(name)
            except ValueError as e:
                raise ValueError(f"role_max.{name}: {e}") from None
            if role >= Role.ADMIN:
                raise ValueError(f"role_max.{name}: admin has no cap of its own (bounded by "
                                 f"the node's {_NODE_MAX} containers)")

    def role_cap(self, role: Role) -> int | None:
        """The container cap of ``role`` (None: admin, or not listed)."""
        from core0.config import _per_role

        return _per_role(self.role_max, role)
