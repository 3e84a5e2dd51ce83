"""Custom authentication methods from the `loom.gateway.auth` entry-point group.

A distribution declares, in its pyproject.toml:

    [project.entry-points."loom.gateway.auth"]
    hmac_header = "my_package.auth:factory"

and the configuration enables it with `middleware.auth.custom.hmac_header: {options...}`.
`factory(name, options)` returns an object with the `Authenticator` interface
(loom/gateway/auth/base.py); it is checked when the gateway starts, so a plugin that is not
installed or returns something else stops the start with a message naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points

from loom.gateway.auth.base import Authenticator
from loom.gateway.config import ConfigError

__all__ = ["GROUP", "load_custom"]

GROUP = "loom.gateway.auth"


def load_custom(name: str, options: Mapping[str, object]) -> Authenticator:
    key = f"middleware.auth.custom.{name}"
    found = entry_points(group=GROUP, name=name)
    if not found:
        raise ConfigError(key, f"no installed plugin provides {name!r} ({GROUP} entry point)")
    factory = next(iter(found)).load()
    try:
        method = factory(name, options)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(key, f"the plugin refused its options: {e}") from None
    if not isinstance(method, Authenticator):
        raise ConfigError(key, "the plugin did not return an authenticator")
    return method
