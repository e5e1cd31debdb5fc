"""Knowledge distillation: losses (``LOSSES``), teacher weightings (``WEIGHTINGS``), targets.

Registry members are filled by the explicit imports below (no file scanning).
"""

from common.kd import fusion, losses, targets
from common.kd.fusion import (
    WEIGHTINGS,
    build_weighting,
    fuse_probs,
    register_weighting,
    renormalise,
)
from common.kd.losses import LOSSES, build_loss, register_loss
from common.kd.targets import TeacherTargets, compute_teacher_targets

__all__ = [
    "LOSSES",
    "WEIGHTINGS",
    "TeacherTargets",
    "build_loss",
    "build_weighting",
    "compute_teacher_targets",
    "fuse_probs",
    "fusion",
    "losses",
    "register_loss",
    "register_weighting",
    "renormalise",
    "targets",
]
