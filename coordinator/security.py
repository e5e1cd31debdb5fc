"""Transport and audit material of a deployment, as ``deploy/make_certs.py`` lays it out.

``init-certs`` (``deploy/entrypoints/init-certs.sh``, run by docker compose and by
``coordinator simulate``) writes everything under one folder; :class:`CertsLayout` names the
files the other roles are given through their environment:

* TLS: a CA and a SuperLink certificate (SANs from ``SUPERLINK_HOSTS``); the SuperLink serves
  with it, the SuperNodes, the SuperExec and the ``flwr`` CLI trust ``ca.crt``.
* Node auth (always on with TLS) and audit keys are NOT made here: each site makes its own
  pairs (``site-node keys init``: ``node.key`` for ``flower-supernode
  --auth-supernode-private-key``, ``audit.key`` signing its egress log) and hands over only
  ``node.pub`` / ``audit.pub``; ``make_certs.py register`` installs them for the coordinator
  (``flwr supernode register``; ``site-keys-dir``: every receipt must verify).
* ``--insecure`` (``TLS=off``): plaintext, no node auth, for local experiments only (warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INSECURE_WARNING = ("WARNING: --insecure: Flower traffic is NOT encrypted and the SuperLink is "
                    "not authenticated; use only for local simulation on 127.0.0.1")


@dataclass(frozen=True)
class CertsLayout:
    """Paths of ``deploy/make_certs.py``'s output folder ``root``."""

    root: Path

    @property
    def ca(self) -> Path:
        """The CA certificate."""
        return self.root / "ca.crt"

    @property
    def public_ca(self) -> Path:
        """The copy of the CA certificate that sites are given."""
        return self.root / "public" / "ca.crt"

    @property
    def server_cert(self) -> Path:
        """The SuperLink's certificate."""
        return self.root / "superlink" / "server.pem"

    @property
    def server_key(self) -> Path:
        """The SuperLink's private key."""
        return self.root / "superlink" / "server.key"

    @property
    def superexec_secret(self) -> Path:
        """The shared secret of the SuperLink and the coordinator's SuperExec."""
        return self.root / "superexec.secret"
