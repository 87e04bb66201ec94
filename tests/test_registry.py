"""Registries check what registers; per-choice options reach the class and nothing else."""

from __future__ import annotations

import pytest

from koemo.errors import KoemoError
from koemo.fusion import FUSIONS, FusionModel, build_fusion
from koemo.registry import Registry


class Base:
    pass


class Part(Base):
    def __init__(self, size: int = 1, *, colour: str = "red"):
        self.size, self.colour = size, colour


def test_only_subclasses_of_the_base_register():
    reg: Registry = Registry("part", Base)
    reg.register("part")(Part)
    with pytest.raises(TypeError, match="part 'str': <class 'str'> is not a subclass of Base"):
        reg.register("str")(str)
    with pytest.raises(TypeError, match="not a subclass"):
        reg.register("instance")(Part())
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("part")(Part)
    with pytest.raises(TypeError, match="not a subclass of FusionModel"):
        FUSIONS.register("not-a-fusion")(Part)
    instances: Registry = Registry("thing", Base, instances=True)
    instances.register("p")(Part())
    with pytest.raises(TypeError, match="not an instance of Base"):
        instances.register("q")(Part)
    with pytest.raises(TypeError, match="not a callable"):
        Registry("loader").register("x")(42)


def test_options_reach_the_class_and_unknown_ones_are_named():
    reg: Registry = Registry("part", Base)
    reg.register("part")(Part)
    assert reg.options_of("part") == {"colour": "red"}
    p = reg.build("part", 3, options={"colour": "blue"})
    assert (p.size, p.colour) == (3, "blue")
    with pytest.raises(KoemoError, match=r"model.options.shade: part 'part' takes colour \(default 'red'\)"):
        reg.build("part", options={"shade": "x"}, where="model.options")


def test_a_fusion_with_its_own_option_is_one_class_and_its_registration(monkeypatch):
    """What adding a fusion takes: a FusionModel subclass with a keyword-only option."""
    import torch

    from koemo.config import ModelConfig
    from koemo.fusion import build_from_config
    from koemo.fusion.models import ShallowFusion

    class Scaled(ShallowFusion):
        def __init__(self, audio_dim, text_dim, n_labels, hidden=768, heads=8, layers=1, dropout=0.1, *,
                     scale: float = 1.0):
            super().__init__(audio_dim, text_dim, n_labels, hidden, heads, layers, dropout)
            self.scale = scale

        def head(self, a, audio_mask, t, text_mask):
            return self.scale * super().head(a, audio_mask, t, text_mask)

    monkeypatch.setattr(FUSIONS, "_entries", dict(FUSIONS._entries))
    FUSIONS.register("scaled")(Scaled)
    model = build_from_config(ModelConfig(fusion="scaled", hidden=8, heads=2, options={"scale": 2.0}), 3, 4, 2)
    assert isinstance(model, FusionModel) and model.scale == 2.0
    a, t = torch.randn(1, 5, 3), torch.randn(1, 2, 4)
    m = torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    assert model(a, m[0], t, m[1]).shape == (1, 2)
    with pytest.raises(KoemoError, match="model.options.scale: fusion model 'mult' takes no options"):
        build_fusion("mult", 3, 4, 2, hidden=8, heads=2, options={"scale": 2.0})
