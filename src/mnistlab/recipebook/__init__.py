from mnistlab.recipebook.recipe import (
    Recipe,
    RecipeError,
    load_recipe,
    parse_recipe,
    recipe_from_dict,
    recipe_names,
)

__all__ = ["Recipe", "RecipeError", "load_recipe", "parse_recipe", "recipe_from_dict", "recipe_names"]
