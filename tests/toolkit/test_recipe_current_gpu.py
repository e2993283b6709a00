"""'current' (the GPU a TensorRT-RTX build runs on) must stand alone in target.compute_capabilities."""

import pytest

from mirasol_edge.toolkit.recipe import RecipeError, load_recipe


def test_current_alone_is_taken():
    recipe = load_recipe("rtx", ['target.compute_capabilities=["current"]'])
    assert recipe.target.compute_capabilities == ("current",)


@pytest.mark.parametrize("targets", ['["current", "8.6"]', '["8.9", "current"]'])
def test_current_beside_others_is_refused_naming_the_key(targets):
    with pytest.raises(RecipeError, match=r"target\.compute_capabilities: 'current' .* must stand alone"):
        load_recipe("rtx", [f"target.compute_capabilities={targets}"])
