"""What loomd checks and says before it opens anything: that its certificate names the node
it is started as, and which ACL policy will be in force (a node without one denies everything,
the administrator included, and would otherwise say nothing)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loom.node.config import ConfigError, NodeConfig
from loom.security.identity import IdentityError, Role, identity_from_der


def check_node_certificate(cfg: NodeConfig) -> None:
    """ConfigError unless `tls.cert` names this node (spiffe://TD/node/NODE_ID): peers pin a
    node's id to its certificate, so a node started under another name could never join, and
    its client answers would claim an id its certificate does not carry. A certificate that
    cannot be read is left to the TLS set-up, which says why."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cfg.tls.cert).read_bytes())
    except (OSError, ValueError):
        return
    try:
        ident = identity_from_der(cert.public_bytes(Encoding.DER), cfg.trust_domain)
    except IdentityError as e:
        raise ConfigError(f"tls.cert: {cfg.tls.cert}: {e}") from None
    if ident.role is not Role.NODE:
        raise ConfigError(f"tls.cert: {cfg.tls.cert} is a {ident.role.value} certificate "
                          f"({ident.principal}), not a node's")
    if ident.name != cfg.node_id:
        raise ConfigError(f"node_id: {cfg.node_id!r} does not match the certificate "
                          f"{cfg.tls.cert}, which names node {ident.name!r} "
                          f"({ident.principal}); start it as --node-id {ident.name} or give "
                          "it its own certificate")


def acl_notice(cfg: NodeConfig, has_log: bool) -> tuple[bool, str]:
    """(is_warning, one line) saying which policy this node will enforce."""
    if has_log:
        where = ("this node's log already holds the cluster's replicated policy, which stays "
                 "in force ('loomctl acl get' shows it)")
    else:
        where = "the configuration seeds the policy of a new cluster"
    if cfg.acl:
        roles = cfg.acl.get("roles")
        principals = cfg.acl.get("principals")
        n_roles = len(roles) if isinstance(roles, dict) else 0
        n_principals = len(principals) if isinstance(principals, dict) else 0
        return False, (f"ACL: the configuration has a policy ({n_roles} roles, {n_principals} "
                       f"principals); {where}")
    return True, ("ACL: the configuration has no [acl] policy; " + where +
                  ("" if has_log else ", and an empty policy denies every request, the admin "
                   "certificate's included (default deny)") +
                  ". 'loomd init --node-id ... > loomd.toml' writes a config with an example "
                  "policy to start from (README: 'Access control from the first start')")
