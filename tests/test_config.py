import pytest

from daat import config as C


def test_defaults_are_the_paper_settings():
    cfg = C.load(["daat"])
    assert cfg.model.name == "vit_base_patch14_dinov2"
    assert (cfg.model.img_size, cfg.model.patch_size) == (224, 14)
    assert cfg.train.epochs == 300
    assert cfg.optim.lr == 5e-4
    assert cfg.attack.eps == pytest.approx(4 / 255)
    assert cfg.attack.alpha == pytest.approx(1 / 255)
    assert cfg.attack.steps == 10
    assert cfg.loss.lam == 0.1
    assert cfg.preset == "daat"


def test_later_presets_override_earlier_and_set_overrides_all():
    cfg = C.load(["daat", "synthetic"], ["attack.eps=8/255", "loss.lam=0.05", "train.epochs=2"])
    assert cfg.model.img_size == C.load(["synthetic"]).model.img_size != 224  # from synthetic
    assert cfg.loss.gamma0 == 1.0  # from daat, untouched by synthetic
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert cfg.loss.lam == 0.05
    assert cfg.train.epochs == 2
    assert cfg.preset == "daat+synthetic"


@pytest.mark.parametrize("assignment, needle", [
    ("train.nope=1", "train.nope"),
    ("nosection.x=1", "nosection"),
    ("train.epochs=abc", "train.epochs"),
    ("train.amp=3", "train.amp"),
    ("optim.betas=[0.9, x]", "optim.betas[1]"),
    ("depth.target=sometimes", "depth.target"),
])
def test_bad_overrides_name_the_key(assignment, needle):
    with pytest.raises(C.ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        C.load([], [assignment])


def test_set_parses_types():
    cfg = C.load([], ["train.samples_per_epoch=null", "depth.online_epochs=[0, 3]",
                      "data.root=/data/x", "train.amp=false", "optim.lr=1e-3"])
    assert cfg.train.samples_per_epoch is None
    assert cfg.depth.online_epochs == [0, 3]
    assert cfg.data.root == "/data/x"
    assert cfg.train.amp is False
    assert cfg.optim.lr == 1e-3


def test_int_accepted_for_float_and_integral_float_for_int():
    cfg = C.load([], ["optim.lr=1", "train.epochs=3.0"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert isinstance(cfg.train.epochs, int) and cfg.train.epochs == 3


def test_yaml_file_and_unknown_preset(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("train:\n  epochs: 7\n")
    assert C.load([str(f)]).train.epochs == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 7\n")
    with pytest.raises(C.ConfigError, match=r"bad.yaml.*train.epoch"):
        C.load([str(bad)])
    with pytest.raises(C.ConfigError, match="unknown preset 'nope'"):
        C.load(["nope"])


def test_roundtrip_through_dict_and_determining_sections():
    cfg = C.load(["pgd-at", "synthetic"])
    again = C.from_dict(C.to_dict(cfg))
    assert again == cfg
    det = C.determining(cfg, "shards")
    assert set(det) == {"data", "depth"}
    assert det["depth"] == {"model": "oracle"}
    changed = C.load(["pgd-at", "synthetic"], ["train.epochs=99"])
    assert C.determining(changed, "shards") == det


def test_validation_catches_patch_mismatch():
    with pytest.raises(C.ConfigError, match="multiple"):
        C.load([], ["model.img_size=100"])


def test_every_preset_loads_alone_and_with_synthetic():
    for name in C.preset_names():
        C.load([name])
        C.load([name, "synthetic"])


@pytest.mark.parametrize("scale", ["synthetic", "synthetic-experiment"])
def test_scale_presets_leave_every_method_setting_to_the_method_preset(scale):
    for method in ("standard", "pgd-at", "daat-no-align", "daat"):
        alone, scaled = C.load([method]), C.load([method, scale])
        for key in ("eps", "alpha", "steps", "random_start"):
            assert getattr(scaled.attack, key) == getattr(alone.attack, key), (method, key)
        for key in ("lam", "gamma0", "gamma_frac", "s_schedule"):
            assert getattr(scaled.loss, key) == getattr(alone.loss, key), (method, key)
        assert scaled.attack.eps_warmup_epochs == 0 and scaled.train.ema_decay == 0


def test_experiment_scale_has_an_8x8_grid_and_the_large_card():
    cfg = C.load(["daat", "synthetic-experiment"])
    assert cfg.model.img_size // cfg.model.patch_size == 8 and cfg.model.stem == "conv"
    assert cfg.data.card == "synthetic-large"
