"""Knowledge distillation: losses (``LOSSES``), teacher weightings (``WEIGHTINGS``), targets.

``functional`` holds the tensor maths; ``targets`` the one teacher-output type
(:class:`TeacherTargets`); ``teacher_outputs`` what a site computes for proxy slices.

Registry members are filled by the explicit imports below (no file scanning).
"""

from common.kd import functional, fusion, learned, losses, targets
from common.kd.functional import fuse_probs
from common.kd.fusion import (
    WEIGHTINGS,
    build_weighting,
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
    "functional",
    "fuse_probs",
    "fusion",
    "learned",
    "losses",
    "register_loss",
    "register_weighting",
    "renormalise",
    "targets",
]
