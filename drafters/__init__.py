"""Engine-agnostic drafter core: draft trees, the drafter protocol, verifiers and algorithms."""

from . import registry
from .base import MAX_BUDGET, MIN_BUDGET, ContextDrafter, Drafter, check_budget
from .errors import ConfigError, DraftTreeError, ModelError, SpecplugError
from .tree import DraftTree, PackedTrees, pack_trees

__all__ = [
    "Drafter",
    "ContextDrafter",
    "check_budget",
    "MIN_BUDGET",
    "MAX_BUDGET",
    "SpecplugError",
    "ConfigError",
    "DraftTreeError",
    "ModelError",
    "DraftTree",
    "PackedTrees",
    "pack_trees",
    "registry",
]
