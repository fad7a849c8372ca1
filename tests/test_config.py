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


@pytest.mark.parametrize(
    "assignment, needle",
    [
        ("train.nope=1", "train.nope"),
        ("nosection.x=1", "nosection"),
        ("train.epochs=abc", "train.epochs"),
        ("train.amp=3", "train.amp"),
        ("optim.betas=[0.9, x]", "optim.betas[1]"),
        ("depth.target=sometimes", "depth.target"),
    ],
)
def test_bad_overrides_name_the_key(assignment, needle):
    with pytest.raises(C.ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        C.load([], [assignment])


def test_set_parses_types():
    cfg = C.load(
        [],
        [
            "train.samples_per_epoch=null",
            "depth.online_epochs=[0, 3]",
            "data.root=/data/x",
            "train.amp=false",
            "optim.lr=1e-3",
        ],
    )
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


def test_roundtrip_through_dict():
    cfg = C.load(["pgd-at", "synthetic"])
    again = C.from_dict(C.to_dict(cfg))
    assert again == cfg


def test_validation_catches_patch_mismatch():
    with pytest.raises(C.ConfigError, match="multiple"):
        C.load([], ["model.img_size=100"])


def test_every_preset_loads_alone_and_with_synthetic():
    for name in C.preset_names():
        C.load([name])
        C.load([name, "synthetic"])


# -- ε and α: fractions of the pixel range everywhere -----------------------------------------
@pytest.mark.parametrize(
    "assignment",
    [
        "attack.eps=4",
        "attack.alpha=2",
        "eval.eps=4",
        "eval.alpha=2",
        "eval.eps_grid=[1, 2, 4]",
        "eval.figure_eps=[2, 4]",
    ],
)
def test_a_radius_above_one_is_refused_with_the_fraction_to_write(assignment):
    key = assignment.split("=")[0]
    with pytest.raises(C.ConfigError, match=rf"{key}.*above 1.*/255"):
        C.load([], [assignment])


def test_eval_radii_are_fractions_like_the_attack_ones():
    cfg = C.load([], ["eval.eps=4/255", "eval.alpha=1/255"])
    assert cfg.eval.eps == cfg.attack.eps == pytest.approx(4 / 255)
    assert cfg.eval.alpha == cfg.attack.alpha == pytest.approx(1 / 255)
    defaults = C.EvalConfig()
    assert defaults.eps == pytest.approx(4 / 255)
    assert defaults.eps_grid == pytest.approx([k / 255 for k in (1, 2, 4, 6, 8, 10)])
    assert defaults.figure_eps == pytest.approx([2 / 255, 4 / 255])
    cfg = C.load([], ["eval.eps_grid=[1/255, 0.01]"])
    assert cfg.eval.eps_grid == pytest.approx([1 / 255, 0.01])


def test_fractions_are_read_in_yaml_files_too(tmp_path):
    f = tmp_path / "radii.yaml"
    f.write_text("attack:\n  eps: 8/255\n  alpha: 2/255\neval:\n  eps_grid: [2/255, 8/255]\n")
    cfg = C.load([str(f)])
    assert cfg.attack.eps == pytest.approx(8 / 255) and cfg.attack.alpha == pytest.approx(2 / 255)
    assert cfg.eval.eps_grid == pytest.approx([2 / 255, 8 / 255])
    for name in ("daat", "pgd-at", "daat-no-align"):
        assert C.load([name]).attack.eps == pytest.approx(4 / 255)


def test_config_show_prints_fractions_and_loads_back(tmp_path):
    cfg = C.load(["daat", "synthetic"], ["eval.eps_grid=[1/255, 0.01]"])
    text = C.show(cfg)
    assert "  eps: 0.0157 (4/255)\n" in text and "  alpha: 0.00392 (1/255)\n" in text
    assert "- 0.00392 (1/255)\n" in text and "- 0.01\n" in text
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert C.load([str(shown)], ["preset=daat+synthetic"]) == cfg


@pytest.mark.parametrize(
    "assignment, needle",
    [
        ("optim.lr=nan", "optim.lr' must be a finite number"),
        ("attack.eps=.inf", "attack.eps' must be a finite number"),
        ("loss.lam=-5", "loss.lam' must be >= 0"),
        ("optim.lr=0", "optim.lr' must be positive"),
        ("optim.min_lr=1", "optim.min_lr' must be <= optim.lr"),
        ("optim.betas=[0.9, 1.5]", "optim.betas' must be two numbers"),
        ("train.epochs=0", "train.epochs' must be positive"),
        ("train.rrc_scale=[0.8, 0.5]", "train.rrc_scale"),
        ("loss.gamma_frac=0", "loss.gamma_frac' must be in \\(0, 1\\]"),
        ("data.jpeg_quality=0", "data.jpeg_quality"),
        ("device=gpu", "device' must be one of auto, cpu, cuda"),
        ("model.attention_aggregate=max", "must be one of mean, last, rollout"),
        ("eval.eps_grid=[4/255, 2/255]", "strictly increasing"),
        ("eval.pgd_long_alpha_frac=-1", "eval.pgd_long_alpha_frac' must be positive"),
        ("depth.online_epochs=[3, 1]", "depth.online_epochs"),
        ("model.init_values=0", "model.init_values' must be positive"),
        ("model.stem=resnet", "must be one of patch, conv"),
        ("train.ema_decay=1", "train.ema_decay' must be in \\[0, 1\\)"),
        ("train.init_from=/some/run", "train.init_from"),
        ("attack.eps_warmup_epochs=-1", "attack.eps_warmup_epochs' must be >= 0"),
        ("train.val_every_epochs=0", "train.val_every_epochs' must be positive"),
    ],
)
def test_every_section_checks_its_ranges_in_one_line(assignment, needle):
    with pytest.raises(C.ConfigError, match=needle) as caught:
        C.load([], [assignment])
    assert "\n" not in str(caught.value)


def test_a_repeated_yaml_key_is_an_error_naming_file_and_key(tmp_path):
    f = tmp_path / "twice.yaml"
    f.write_text("train:\n  epochs: 7\n  batch_size: 8\n  epochs: 9\n")
    with pytest.raises(
        C.ConfigError, match=r"twice.yaml.*'epochs' appears twice \(lines 2 and 4\)"
    ):
        C.load([str(f)])
    g = tmp_path / "sections.yaml"
    g.write_text("train:\n  epochs: 7\nloss:\n  lam: 0.1\ntrain:\n  batch_size: 8\n")
    with pytest.raises(C.ConfigError, match=r"sections.yaml.*'train' appears twice"):
        C.load([str(g)])


def test_configs_saved_by_older_versions_are_upgraded_when_read():
    """Runs and checkpoints made before eval radii were fractions (and before model.init_values
    existed) still load: 1/255 units are converted, the architecture's own LayerScale kept."""
    saved = C.to_dict(C.Config())
    saved["eval"].update(eps=4, alpha=1, eps_grid=[1, 2, 4, 6, 8, 10], figure_eps=[2, 4])
    del saved["model"]["init_values"]
    cfg = C.from_dict(saved)
    assert cfg.eval.eps == pytest.approx(4 / 255) and cfg.eval.alpha == pytest.approx(1 / 255)
    assert cfg.eval.eps_grid == pytest.approx(C.EvalConfig().eps_grid)
    assert cfg.eval.figure_eps == pytest.approx([2 / 255, 4 / 255])
    assert cfg.model.init_values == 1e-5  # timm's vit_base_patch14_dinov2 had LayerScale
    saved["model"]["name"] = "vit_small_patch16_224"
    assert C.from_dict(saved).model.init_values is None
    assert C.from_dict(C.to_dict(cfg)) == cfg  # a current config is read as it is


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
