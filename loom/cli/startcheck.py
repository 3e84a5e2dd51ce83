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
    """ConfigError when `tls.cert` names another node than `node_id`: peers pin a node's id to
    its certificate, so a node started under another name could never join, and its answers
    would claim an id its certificate does not carry. A cluster member's certificate must name
    it (spiffe://TD/node/NODE_ID); a single node may also serve with a plain server
    certificate. A certificate that cannot be read is left to the TLS set-up, which says why."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cfg.tls.cert).read_bytes())
    except (OSError, ValueError):
        return
    try:
        ident = identity_from_der(cert.public_bytes(Encoding.DER), cfg.trust_domain)
    except IdentityError as e:
        problem = str(e)
    else:
        if ident.role is Role.NODE and ident.name != cfg.node_id:
            raise ConfigError(f"node_id: {cfg.node_id!r} does not match the certificate "
                              f"{cfg.tls.cert}, which names node {ident.name!r} "
                              f"({ident.principal}); start it as --node-id {ident.name} or "
                              "give it its own certificate")
        if ident.role is Role.NODE:
            return
        problem = f"it is a {ident.role.value} certificate ({ident.principal})"
    if cfg.peers or cfg.join:
        raise ConfigError(f"tls.cert: {cfg.tls.cert} does not name node {cfg.node_id!r}: "
                          f"{problem}; a cluster member proves its node id with it")


def acl_notice(cfg: NodeConfig, has_log: bool) -> tuple[bool, str]:
    """(is_warning, one line) saying which policy this node will enforce: the replicated one
    when the node already has a log or joins a cluster; else, for a new cluster, the one its
    configuration seeds."""
    replicated = has_log or cfg.join
    if cfg.acl:
        roles, principals = cfg.acl.get("roles"), cfg.acl.get("principals")
        counts = (f"{len(roles) if isinstance(roles, dict) else 0} roles, "
                  f"{len(principals) if isinstance(principals, dict) else 0} principals")
        if replicated:
            return False, (f"ACL: the cluster's replicated policy is in force ('loomctl acl "
                           f"get'); the configuration's ({counts}) seeds only a new cluster")
        return False, f"ACL: the configuration's policy ({counts}) seeds this new cluster"
    if replicated:
        return True, ("ACL: the configuration has no [acl] policy; the cluster's replicated "
                      "policy is in force ('loomctl acl get' shows it, 'loomctl acl set FILE' "
                      "changes it)")
    return True, ("ACL: the configuration has no [acl] policy, so this new cluster gets an "
                  "empty one, which denies every request, the admin certificate's included "
                  "(default deny). 'loomd init --node-id ... > loomd.toml' writes a config "
                  "with an example policy to start from (README: 'Access control from the "
                  "first start')")
