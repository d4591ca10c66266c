"""Deployment targets: what each edge toolchain accepts, and a check of the output on it.

A profile says which candidates each op type may take on the target, whether the target needs
static shapes, and how to verify an exported model there (``verify``: how many nodes run on the
target, which fall back and why, and the output SQNR as the target computes it). Phase 1 and
Phase 2 search only within what the profile allows.

To add a target: a module here with a ``PROFILE = TargetProfile(...)`` and a ``verify`` function
(import its runtime inside, so the core install stays light), then one line in ``_MODULES``.
The profile type is in ``profile``, the helpers verifications share in ``checks``.
"""

from __future__ import annotations

import importlib

from onnxmp.errors import ConfigError
from onnxmp.targets.profile import TargetProfile

__all__ = ["TARGETS", "TargetProfile", "get_target"]

_MODULES = {"ort": "onnxmp.targets.ort", "qnn-htp": "onnxmp.targets.qnn_htp", "openvino": "onnxmp.targets.openvino",
            "generic": "onnxmp.targets.generic"}
TARGETS = tuple(_MODULES)


def get_target(name: str) -> TargetProfile:
    if name not in _MODULES:
        raise ConfigError(f"unknown --target {name!r}; use one of {', '.join(TARGETS)}")
    return importlib.import_module(_MODULES[name]).PROFILE
