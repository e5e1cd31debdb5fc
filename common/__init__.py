"""fedmtkd shared library: data, models, metrics, distillation losses and wire protocol.

Importing ``common`` is cheap on purpose: torch, nibabel and friends are imported only by
the submodules that need them (``common.models``, ``common.data`` ...).
"""

__version__ = "0.1.0"
