"""Engine-agnostic drafter core: draft trees, the drafter protocol, verifiers and algorithms."""
from .base import Drafter, ContextDrafter, check_budget, MIN_BUDGET, MAX_BUDGET
from .errors import SpecplugError, ConfigError, DraftTreeError, ModelError
from .tree import DraftTree, PackedTrees, pack_trees
from . import registry

__all__ = ["Drafter", "ContextDrafter", "check_budget", "MIN_BUDGET", "MAX_BUDGET",
           "SpecplugError", "ConfigError", "DraftTreeError", "ModelError",
           "DraftTree", "PackedTrees", "pack_trees", "registry"]
