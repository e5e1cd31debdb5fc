"""The signed exchange log of what crossed a site's (or the coordinator's) boundary.

Modules: :mod:`~common.audit.log` (the hash-chained log, its verification and summary),
:mod:`~common.audit.entries` (entry model, hashing, receipts), :mod:`~common.audit.keys`
(Ed25519 keys and :class:`~common.audit.keys.AuditError`), :mod:`~common.audit.anchor`
(signed log heads), :mod:`~common.audit.dp` (the DP accounting of what the log shows was sent),
:mod:`~common.audit.report` and :mod:`~common.audit.html` (what ``audit`` reports) and
:mod:`~common.audit.cli` (the ``audit`` subcommand of both CLIs).
"""
