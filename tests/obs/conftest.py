"""The HTTP door's fixtures (a real node with its HTTP listener) and the binary client's."""

from tests.http_door.conftest import as_, hnode
from tests.node.conftest import dial

__all__ = ["as_", "dial", "hnode"]
