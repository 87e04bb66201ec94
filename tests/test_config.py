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
    from koemo.config import recipe_names

    assert {"emotiontts", "emotiontts-demo", "emotiontts-paper", "aihub", "manifest", "paper-grid"} <= set(recipe_names())
    for name in recipe_names():
        assert load_config(Recipe, resolve_recipe(name)).name


def test_a_recipe_states_only_what_it_changes_over_its_base(tmp_path):
    paper = load_config(Recipe, resolve_recipe("emotiontts-paper"))
    main = load_config(Recipe, resolve_recipe("emotiontts"))
    demo = load_config(Recipe, resolve_recipe("emotiontts-demo"))
    assert len(paper.eval.table3) == 8 and paper.eval.snr_values == [20.0, 10.0, 5.0, 0.0]  # from paper-grid
    assert paper.name == "emotiontts-paper" and paper.split.folds == 3 and paper.split.valid == "holdout"
    assert demo.name == "emotiontts" and demo.split.folds == 5 and demo.split.valid == "none"
    assert demo.eval.seeds == 1 and demo.eval.snr_values == [] and demo.eval.protocols == []
    assert demo.eval.text_neutral and demo.eval.table3 == ["linear"]
    assert demo.train == main.train and demo.model == main.model  # the rest comes from the base
    # the shipped recipe reads the merged window; emotiontts-30s is it with the whole window, nothing else
    from dataclasses import replace

    whole = load_config(Recipe, resolve_recipe("emotiontts-30s"))
    assert (main.encoders.speech_window, whole.encoders.speech_window) == ("30s-merged", "30s")
    assert replace(whole.encoders, speech_window="30s-merged") == main.encoders
    assert (whole.train, whole.model, whole.eval, whole.augment) == (main.train, main.model, main.eval, main.augment)
    assert load_config(Recipe).eval.table3 == []  # no grid hides in Python defaults
    (tmp_path / "mine.yaml").write_text("base: emotiontts\nname: mine\nmodel:\n  options: {stats: meanstd}\n")
    mine = load_config(Recipe, tmp_path / "mine.yaml", ["model.options.extra=2"])
    assert mine.name == "mine" and mine.model.options == {"stats": "meanstd", "extra": 2}
    assert mine.model.hidden == main.model.hidden and mine.eval.table3 == main.eval.table3
    (tmp_path / "a.yaml").write_text("base: b\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(KoemoError, match="recipe bases form a loop"):
        load_config(Recipe, tmp_path / "a.yaml")
    (tmp_path / "orphan.yaml").write_text("base: no-such-base\n")
    with pytest.raises(KoemoError, match="no-such-base: no such recipe file or recipe name"):
        load_config(Recipe, tmp_path / "orphan.yaml")


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
