"""Lightning and torchmetrics without the back-ends of metrics no run uses.

``import torchmetrics`` (which ``import lightning`` does too) imports its text, image and
multimodal modules, and those import ``transformers`` and ``torchvision`` when they are installed,
as they are in most ML environments: seconds at every start (scripts/gpu_check.sh's import profile;
docs/performance figures). A run needs neither. Importing this module first imports Lightning and
torchmetrics while their availability checks (``lightning_utilities.RequirementCache``) answer
"not installed" for the packages in ``UNUSED``; each check keeps its first answer, so those
metrics stay unavailable in this process, and nothing else changes. Every module of the training
stack imports this module before Lightning.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager

from lightning_utilities.core.imports import RequirementCache

UNUSED = frozenset({"transformers", "torchvision", "torchaudio", "torch_fidelity", "pycocotools"})


def _package(requirement: str | None) -> str:
    """'transformers' of 'transformers>=4.4.0' (the distribution or module name a check asks for)."""
    return re.split(r"[<>=!~\[;. ]", (requirement or "").strip(), maxsplit=1)[0]


@contextmanager
def unused_backends_hidden():
    """While inside, availability checks of the packages in ``UNUSED`` answer 'not installed'."""
    check = RequirementCache._check_available

    def hidden(self) -> None:
        if not hasattr(self, "available") and _package(self.requirement or self.module) in UNUSED:
            self.available, self.message = False, f"{self.requirement or self.module} not imported by mim-lightning"
            return
        check(self)

    RequirementCache._check_available = hidden
    try:
        yield
    finally:
        RequirementCache._check_available = check


if "torchmetrics" not in sys.modules:
    with unused_backends_hidden():
        import lightning  # noqa: F401
        import torchmetrics  # noqa: F401
