import pytest

from koemo.config import Recipe, load_config, resolve_recipe, to_dict
from koemo.errors import KoemoError


def test_recipe_yaml_and_overrides():
    cfg = load_config(Recipe, resolve_recipe("emotiontts"), ["train.lr=1e-4", "split.folds=5", "asr.snr=10",
                                                             "split.ratios=[0.7,0.2,0.1]", "train.class_weights=true"])
    assert cfg.train.lr == 1e-4 and cfg.split.folds == 5 and cfg.asr.snr == 10.0
    assert cfg.split.ratios == (0.7, 0.2, 0.1) and cfg.train.class_weights is True
    assert cfg.data.label_set == "emotiontts4"
    assert to_dict(cfg)["split"]["ratios"] == [0.7, 0.2, 0.1]


def test_every_recipe_loads():
    for name in ("emotiontts", "aihub", "manifest"):
        assert load_config(Recipe, resolve_recipe(name)).name


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "unknown config key train.lrr"),
    ("train.epochs=many", "train.epochs: expected int, got 'many'"),
    ("train.class_weights=3", "expected true or false"),
    ("nonsense", "must look like section.key=value"),
])
def test_bad_overrides(override, message):
    with pytest.raises(KoemoError, match=message):
        load_config(Recipe, None, [override])


def test_missing_recipe(tmp_path):
    with pytest.raises(KoemoError, match="no such recipe"):
        resolve_recipe(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(KoemoError, match="bad.yaml: not valid YAML"):
        load_config(Recipe, bad)
