"""Turn known user-facing errors into one clear line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is already a clear one-liner naming the file or site."""
    from common.audit import AuditError
    from common.config import ConfigError
    from common.data.errors import DataError
    from common.models.checkpoint import CheckpointError
    from common.registry import RegistryError

    return (AuditError, ConfigError, DataError, CheckpointError, RegistryError)


def run_guarded(fn: Callable[[], int], prog: str) -> int:
    """Run ``fn``; print known errors as ``prog: error: message`` and return 2."""
    try:
        return fn()
    except user_error_types() as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
