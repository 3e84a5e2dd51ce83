"""The HTTP door's fixtures (a real node with its HTTP listener), the binary client's, and
the gateway's local identity provider."""

from tests.gateway.conftest import fetcher, idp, signing_keys
from tests.http_door.conftest import as_, hnode
from tests.node.conftest import dial

__all__ = ["as_", "dial", "fetcher", "hnode", "idp", "signing_keys"]
