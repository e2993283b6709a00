import pytest

from mirasol_edge.toolkit.recipe import RECIPES_DIR, RecipeError, load_recipe

BUNDLED = ["cpu", "cpu-fast", "rtx", "h100", "l4", "agx-orin", "orin-nx", "orin-nano", "thor"]


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_recipe_loads(name):
    recipe = load_recipe(name)
    assert recipe.target.name == name
    assert recipe.target.backend in ("onnxruntime", "tensorrt", "tensorrt-rtx")


def write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def cpu_text():
    return (RECIPES_DIR / "cpu.toml").read_text()


def test_recipes_state_only_what_differs_from_the_defaults(tmp_path):
    path = write(tmp_path, cpu_text() + "\n[build]\nbatch = 3\n")
    recipe = load_recipe(path)
    assert recipe.build.batch == 3 and recipe.build.workspace_mib == load_recipe("cpu").build.workspace_mib
    defaults = set((RECIPES_DIR / "defaults.toml").read_text().splitlines()) - {""}
    for name in BUNDLED:  # no bundled recipe repeats a default value
        repeated = [line for line in (RECIPES_DIR / f"{name}.toml").read_text().splitlines()
                    if line in defaults and not line.startswith(("[", "#"))]
        assert not repeated, (name, repeated)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, cpu_text() + "\n[build]\nbatchh = 2\n")
    with pytest.raises(RecipeError, match=r"r\.toml: build\.batchh: unknown key"):
        load_recipe(path)


def test_missing_key_is_named(tmp_path):
    path = write(tmp_path, cpu_text().replace('name = "cpu"\n', ""))
    with pytest.raises(RecipeError, match=r"r\.toml: target\.name: missing key"):
        load_recipe(path)


def test_bad_value_type_is_named(tmp_path):
    path = write(tmp_path, cpu_text() + '\n[build]\nbatch = "one"\n')
    with pytest.raises(RecipeError, match=r"build\.batch: expected int, got str"):
        load_recipe(path)


def test_bad_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[target\n")
    with pytest.raises(RecipeError, match=r"r\.toml: not valid TOML"):
        load_recipe(path)


@pytest.mark.parametrize("name", ["agx-orin", "orin-nx", "orin-nano"])
def test_fp8_on_orin_is_refused_with_the_reason(name):
    with pytest.raises(RecipeError, match=r"precision\.chunk_encoder: 'fp8' refused: .*has no FP8"):
        load_recipe(name, ["precision.chunk_encoder=fp8"])


def test_fp8_is_accepted_on_hopper():
    assert load_recipe("h100", ["precision.ar_step=fp8"]).precision.ar_step == "fp8"


@pytest.mark.parametrize(
    "recipe, override, pattern",
    [
        ("orin-nano", "build.dla_core=0", r"build\.dla_core: target 'orin-nano' has 0 DLA cores"),
        ("thor", "build.dla_core=0", r"build\.dla_core: target 'thor' has 0 DLA cores"),
        ("rtx", 'build.hardware_compatibility="ampere_plus"', r"build\.hardware_compatibility: only full TensorRT"),
        ("cpu", "target.device=cuda", None),
        ("h100", "target.device=cpu", r"target\.device: backend 'tensorrt' needs device 'cuda'"),
        ("h100", "build.optimization_level=9", r"build\.optimization_level: must be 0\.\.5"),
    ],
)
def test_self_contradicting_recipes_are_refused(recipe, override, pattern):
    if pattern is None:  # ONNX Runtime may run on CUDA: not a contradiction
        accepted = load_recipe(recipe, [override])
        assert (accepted.target.backend, accepted.target.device) == ("onnxruntime", "cuda")
        return
    with pytest.raises(RecipeError, match=pattern):
        load_recipe(recipe, [override])


def test_dla_is_allowed_on_agx_orin():
    assert load_recipe("agx-orin", ["build.dla_core=1"]).build.dla_core == 1


def test_overrides_take_toml_values_and_refuse_unknown_keys():
    assert load_recipe("h100", ["build.batch=4"]).build.batch == 4
    with pytest.raises(RecipeError, match="a recipe has no key build.bach"):
        load_recipe("h100", ["build.bach=4"])
    with pytest.raises(RecipeError, match="expected section.key=value"):
        load_recipe("h100", ["batch"])


def test_unknown_recipe_lists_the_bundled_ones():
    with pytest.raises(RecipeError, match="no such recipe.*orin-nano"):
        load_recipe("jetson-tx2")


@pytest.mark.parametrize("override, message", [
    ('precision.pin={"ar.blocks.0" = "int3"}', r"precision\.pin\.ar\.blocks\.0: 'int3' is not a precision"),
    ('precision.pin={"vision.blocks.0" = "fp32"}', r"precision\.pin\.vision\.blocks\.0: a layer group starts with"),
    ('precision.pin={"ar.blocks.0" = "int8"}', r"precision\.pin\.ar\.blocks\.0: 'int8': the group is quantized to fp32"),
    ("calibration.clips=1", r"calibration\.clips: needs at least 2 clips"),
    ("calibration.method=Median", r"calibration\.method: must be one of MinMax"),
    ("calibration.held_out=1.5", r"calibration\.held_out: must be a fraction"),
])
def test_pins_and_calibration_are_checked(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("cpu", [override])


def test_pins_to_the_components_precision_are_accepted():
    recipe = load_recipe("orin-nano", ['precision.pin={"ar.blocks.0" = "int4", "text.blocks.1" = "fp32"}'])
    assert recipe.precision.pin == {"ar.blocks.0": "int4", "text.blocks.1": "fp32"}


def test_fp8_needs_compute_capability_8_9():
    with pytest.raises(RecipeError, match=r"precision\.ar_step: 'fp8' refused: compute capability 8\.6 has no FP8"):
        load_recipe("rtx", ["precision.ar_step=fp8"])
    ada = load_recipe("rtx", ["precision.ar_step=fp8", 'target.compute_capabilities=["8.9", "12.0"]'])
    assert ada.precision.ar_step == "fp8" and tuple(ada.target.compute_capabilities) == ("8.9", "12.0")


@pytest.mark.parametrize("override, message", [
    ("build.version_compatible=true", r"build\.version_compatible: TensorRT-RTX engines are tied to the release"),
    ('target.compute_capabilities=["9.0"]', r"target\.compute_capabilities\[0\]: TensorRT-RTX builds for .*not '9\.0'"),
])
def test_rtx_recipes_refuse_what_tensorrt_rtx_cannot_do(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("rtx", [override])


def test_version_compatibility_stays_open_to_full_tensorrt():
    assert load_recipe("h100", ["build.version_compatible=true"]).build.version_compatible is True
    assert load_recipe("h100").build.version_compatible is False


def test_a_precision_the_cpu_runs_slowly_is_accepted_with_its_measured_cost():
    from mirasol_edge.toolkit.precision import slow_precision_warnings

    recipe = load_recipe("cpu", ["precision.ar_step=int8", "precision.chunk_encoder=int8"])
    (warning,) = slow_precision_warnings(recipe)
    assert "precision.ar_step = 'int8' runs 1.75x fp32's time" in warning and "int4 0.59x" in warning
    assert slow_precision_warnings(load_recipe("cpu-fast")) == []
    assert slow_precision_warnings(load_recipe("orin-nano")) == []  # TensorRT fuses its own Q/DQ
