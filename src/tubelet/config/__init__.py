"""Typed recipes: the shared sections' schema, YAML loading, dotted overrides, validation, and the
registry that methods fill with their own config sections."""

from tubelet.config.loader import (
    dump_recipe,
    from_dict,
    list_recipes,
    load_recipe,
    parse_overrides,
    read_recipe_tree,
    resolve_recipe,
    to_dict,
)
from tubelet.config.registry import MethodConfig, method_config_class, method_names, register_method_config
from tubelet.config.schema import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    SyntheticConfig,
    TrainerConfig,
)

__all__ = [
    "AugmentConfig", "DataConfig", "MethodConfig", "ModelConfig", "OptimConfig", "Recipe", "SyntheticConfig",
    "TrainerConfig", "dump_recipe", "from_dict", "list_recipes", "load_recipe", "method_config_class",
    "method_names", "parse_overrides", "read_recipe_tree", "register_method_config", "resolve_recipe", "to_dict",
]
