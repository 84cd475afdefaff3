"""Typed recipes: schema, YAML loading, dotted overrides and validation."""

from tubelet.config.loader import dump_recipe, from_dict, list_recipes, load_recipe, parse_overrides, to_dict
from tubelet.config.schema import (
    METHOD_CONFIGS,
    AugmentConfig,
    DataConfig,
    MAESTConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    Recipe,
    SupervisedConfig,
    SyntheticConfig,
    TrainerConfig,
)

__all__ = [
    "METHOD_CONFIGS", "AugmentConfig", "DataConfig", "MAESTConfig", "MethodConfig", "ModelConfig",
    "OptimConfig", "Recipe", "SupervisedConfig", "SyntheticConfig", "TrainerConfig",
    "dump_recipe", "from_dict", "list_recipes", "load_recipe", "parse_overrides", "to_dict",
]
