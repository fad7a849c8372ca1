"""The student's attention tap against attention computed explicitly from the weights, the
logits/tokens contract, and the frozen teacher built from tiny random weights saved to disk."""

import copy

import huggingface_hub.constants
import pytest
import timm
import torch
import torch.nn.functional as F

from daat.config import ConfigError, ModelConfig
from daat.config import load as config_load
from daat.errors import DaatError, DataError
from daat.models import DaatViT, FeatureProjection, build_projection, build_student
from daat.stems import ConvStem
from daat.teacher_model import Teacher, build_teacher, save_random_teacher, teacher_input_size
from daat.train.losses import align_loss

SYNTH = dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4)


def _randomise(vit: torch.nn.Module, seed: int) -> None:
    """Weights far from timm's init (layer scale 1e-5 would make every block almost the identity
    and every block's attention almost the same), so the reference comparison means something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if name.endswith(".gamma"):  # LayerScale
                p.fill_(1.0)
            else:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def tiny_vit(aggregate="mean", seed=0, **extra) -> DaatViT:
    torch.manual_seed(seed)
    vit = timm.create_model(
        "vit_base_patch14_dinov2", pretrained=False, num_classes=5, **{**SYNTH, **extra}
    )
    _randomise(vit, seed)
    return DaatViT(vit, aggregate).eval()


def explicit_forward(model: DaatViT, x: torch.Tensor):
    """The ViT written out by hand from its weights with full softmax(QK^T) maps, no fused path."""
    vit = model.vit
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed((x - model.mean) / model.std)))
    maps = []
    for blk in vit.blocks:
        a = blk.attn
        u = blk.norm1(h)
        b, n, _ = u.shape
        qkv = F.linear(u, a.qkv.weight, a.qkv.bias).reshape(b, n, 3, a.num_heads, a.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = a.q_norm(q), a.k_norm(k)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * a.head_dim**-0.5, dim=-1)  # [B,H,N,N]
        maps.append(attn)
        o = a.proj(a.norm((attn @ v).transpose(1, 2).reshape(b, n, -1)))
        h = h + blk.ls1(o)
        h = h + blk.ls2(blk.mlp(blk.norm2(h)))
    feats = vit.norm(h)
    return vit.forward_head(feats), maps, feats


def reference_attention(maps, prefix: int, aggregate: str) -> torch.Tensor:
    if aggregate == "mean":
        cls = torch.stack([m.mean(1)[:, 0] for m in maps]).mean(0)
    elif aggregate == "last":
        cls = maps[-1].mean(1)[:, 0]
    else:  # rollout, as a plain product of full matrices: R = A^_L ... A^_1
        n = maps[0].shape[-1]
        eye = torch.eye(n)
        rollout = eye.expand_as(maps[0][:, 0]).clone()
        for m in maps:
            rollout = (0.5 * m.mean(1) + 0.5 * eye) @ rollout
        cls = rollout[:, 0]
    patches = cls[:, prefix:]
    return patches / patches.sum(-1, keepdim=True)


def test_build_student_synthetic_shapes_and_fused_attention():
    model = build_student(ModelConfig(**SYNTH, attention_aggregate="last"), num_classes=7)
    assert model.grid == (8, 8) and model.num_prefix_tokens == 1 and model.embed_dim == 64
    assert model.aggregate == "last"
    assert all(b.attn.fused_attn for b in model.vit.blocks)
    assert len(model.vit.blocks) == 4 and model.vit.blocks[0].attn.num_heads == 4
    # normalisation is the first layer: ImageNet statistics from the timm pretrained_cfg
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 7)


def test_build_student_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.name"):
        build_student(ModelConfig(name="no_such_vit", **{k: v for k, v in SYNTH.items()}), 3)
    with pytest.raises(ConfigError, match="attention_aggregate"):
        build_student(ModelConfig(**SYNTH, attention_aggregate="max"), 3)


def test_conv_stem_keeps_the_patch_grid_and_the_tap():
    model = build_student(ModelConfig(**SYNTH, stem="conv"), num_classes=7)
    stem = model.vit.patch_embed
    assert isinstance(stem, ConvStem) and model.grid == (8, 8)
    convs = [m for m in stem.proj if isinstance(m, torch.nn.Conv2d)]
    # patch 8 = three stride-2 3x3 convs widening to embed_dim / 2, then a 1x1 conv to embed_dim
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 8, (3, 3), (2, 2)),
        (8, 16, (3, 3), (2, 2)),
        (16, 32, (3, 3), (2, 2)),
        (32, 64, (1, 1), (1, 1)),
    ]
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert stem(x).shape == (3, 64, 64)  # [B, 8*8 tokens, embed_dim]
    out = model.eval().forward_tapped(x, need_attention=True, need_tokens=True)
    assert out.logits.shape == (3, 7) and out.tokens.shape == (3, 65, 64)
    assert out.attention.shape == (3, 64) and (out.attention >= 0).all()
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3), atol=1e-6, rtol=0)


def test_conv_stem_tap_matches_explicit_attention_and_has_no_batch_statistics():
    torch.manual_seed(5)
    model = build_student(ModelConfig(**{**SYNTH, "patch_size": 4, "img_size": 32}, stem="conv"), 5)
    _randomise(model.vit, 5)
    model.eval()
    assert model.grid == (8, 8)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = model.forward_tapped(x, need_attention=True)
    logits, maps, _ = explicit_forward(model, x)
    torch.testing.assert_close(
        out.attention, reference_attention(maps, 1, "mean"), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    model.train()  # a sample's logits never depend on the rest of its batch, even in train mode
    torch.testing.assert_close(model(x)[:1], model(x[:1]), atol=1e-5, rtol=1e-5)


def test_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(ConfigError, match="power of two"):
        build_student(ModelConfig(**{**SYNTH, "patch_size": 6, "img_size": 48}, stem="conv"), 3)
    with pytest.raises(ConfigError, match="model.stem"):
        config_load([], ["model.stem=resnet"])
    with pytest.raises(ConfigError, match="no pretrained weights"):
        config_load([], ["model.stem=conv", "model.pretrained=true"])


@pytest.mark.parametrize("aggregate", ["mean", "last", "rollout"])
@pytest.mark.parametrize(
    "extra", [{}, {"qk_norm": True, "reg_tokens": 2}], ids=["plain", "qknorm-regs"]
)
def test_tap_matches_explicit_attention(aggregate, extra):
    model = tiny_vit(aggregate, seed=1, **extra)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = model.forward_tapped(x, need_attention=True, need_tokens=True)
    logits, maps, feats = explicit_forward(model, x)
    prefix = model.num_prefix_tokens
    assert prefix == 1 + extra.get("reg_tokens", 0)
    expected = reference_attention(maps, prefix, aggregate)
    assert out.attention.shape == (3, 64)
    torch.testing.assert_close(out.attention, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3), atol=1e-6, rtol=0)
    assert (out.attention >= 0).all()
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.tokens, torch.cat([feats[:, :1], feats[:, prefix:]], 1), atol=1e-5, rtol=1e-5
    )


def test_explicit_reference_agrees_with_timm_unfused_path():
    model = tiny_vit(seed=2)
    unfused = copy.deepcopy(model.vit)
    for blk in unfused.blocks:
        blk.attn.fused_attn = False
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(
        explicit_forward(model, x)[0], unfused((x - model.mean) / model.std), atol=1e-5, rtol=1e-5
    )


def test_attention_is_not_uniform_and_differs_between_aggregates():
    x = torch.rand(2, 3, 64, 64)
    mean = tiny_vit("mean", seed=3).forward_tapped(x, need_attention=True).attention
    last = tiny_vit("last", seed=3).forward_tapped(x, need_attention=True).attention
    assert mean.std(-1).min() > 1e-4
    assert (mean - last).abs().max() > 1e-4


def test_plain_forward_equals_forward_tapped_logits_and_tap_is_inert_after():
    model = tiny_vit(seed=4).train()
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        out = model.forward_tapped(x, need_attention=True, need_tokens=True)
        again = model.forward_tapped(x, need_attention=True)
    assert isinstance(plain, torch.Tensor)  # forward is logits only, as in timm
    with pytest.raises(TypeError):
        model(x, need_attention=True)
    torch.testing.assert_close(out.logits, plain, atol=0, rtol=0)
    torch.testing.assert_close(again.attention, out.attention, atol=0, rtol=0)
    assert out.tokens.shape == (4, 65, 64)
    assert model._sink.rows is None  # the hooks are inert again
    nothing = model.forward_tapped(x)
    assert nothing.attention is None and nothing.tokens is None


def test_wrong_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match="model.img_size"):
        tiny_vit(seed=5)(torch.rand(2, 3, 32, 32))


def test_tap_switched_off_when_forward_raises(monkeypatch):
    model = tiny_vit(seed=5)

    def boom(_x):
        raise RuntimeError("boom")

    monkeypatch.setattr(model.vit.blocks[2].mlp, "forward", boom)  # after some hooks have fired
    with pytest.raises(RuntimeError, match="boom"):
        model.forward_tapped(torch.rand(2, 3, 64, 64), need_attention=True)
    assert model._sink.rows is None
    monkeypatch.undo()
    assert model.forward_tapped(torch.rand(2, 3, 64, 64), need_attention=True).attention.shape == (
        2,
        64,
    )


def test_deepcopy_taps_its_own_blocks():
    model = tiny_vit("mean", seed=8)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.vit.blocks[0].attn.qkv.parameters():
            p.mul_(2.0)
    x = torch.rand(2, 3, 64, 64)
    for m in (model, clone):
        expected = reference_attention(explicit_forward(m, x)[1], 1, "mean")
        torch.testing.assert_close(
            m.forward_tapped(x, need_attention=True).attention, expected, atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("aggregate", ["mean", "last", "rollout"])
def test_align_loss_gradient_reaches_every_block(aggregate):
    model = tiny_vit(aggregate, seed=6)
    x = torch.rand(2, 3, 64, 64)
    target = torch.rand(2, 64)
    align_loss(
        model.forward_tapped(x, need_attention=True).attention,
        target / target.sum(-1, keepdim=True),
    ).backward()
    last = len(model.vit.blocks) - 1
    for i, blk in enumerate(model.vit.blocks):
        grad = blk.attn.qkv.weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"block {i}"
        if aggregate != "last" or i == last:
            # the tap's own q/k rows (not only the residual stream) carry gradient: the CLS
            # query row
            assert grad[: model.embed_dim].abs().sum() > 0, f"block {i} q"
    assert model.vit.head.weight.grad is None  # L_align does not touch the classifier head


# ---------------------------------------------------------------- teacher


@pytest.fixture(params=["teacher.safetensors", "teacher.pt", "teacher_dir"])
def saved_teacher(request, tmp_path):
    return save_random_teacher(
        tmp_path / request.param,
        embed_dim=48,
        depth=2,
        num_heads=2,
        patch_size=8,
        img_size=64,
        seed=3,
    )


def _same_weights_vit(**kw):
    torch.manual_seed(3)
    return timm.create_model(
        "vit_base_patch14_dinov2", pretrained=False, num_classes=0, **kw
    ).eval()


def test_teacher_loads_saved_weights_frozen(saved_teacher):
    teacher = build_teacher(str(saved_teacher), 64, (8, 8), "cpu")
    assert isinstance(teacher, Teacher) and teacher.embed_dim == 48
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.vit.training
    x = torch.rand(2, 3, 64, 64)
    reference = _same_weights_vit(img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=2)
    with torch.no_grad():
        expected = reference.forward_features((x - teacher.mean) / teacher.std)
    tokens = teacher(x)
    assert tokens.shape == (2, 65, 48) and not tokens.requires_grad
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_teacher_resizes_patch_tokens_to_student_grid(tmp_path):
    path = save_random_teacher(tmp_path / "t.safetensors", embed_dim=32, patch_size=16, seed=3)
    teacher = build_teacher(str(path), 64, (8, 8), "cpu")
    assert tuple(teacher.vit.patch_embed.grid_size) == (4, 4)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        own = teacher.vit.forward_features((x - teacher.mean) / teacher.std)
    patches = own[:, 1:].transpose(1, 2).reshape(2, 32, 4, 4)
    resized = F.interpolate(patches, size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.cat([own[:, :1], resized.flatten(2).transpose(1, 2)], 1)
    torch.testing.assert_close(teacher(x), expected)


def test_teacher_runs_at_other_sizes_and_patch14_rounds_input(tmp_path):
    path = save_random_teacher(tmp_path / "t.safetensors", embed_dim=32, patch_size=8, img_size=64)
    small = build_teacher(str(path), 32, (2, 2), "cpu")  # pos-embed resampled 8x8 -> 4x4 by timm
    assert small(torch.rand(1, 3, 32, 32)).shape == (1, 5, 32)
    assert teacher_input_size(224, 14) == 224 and teacher_input_size(64, 14) == 70
    p14 = save_random_teacher(
        tmp_path / "p14.safetensors", embed_dim=32, patch_size=14, img_size=70
    )
    teacher = build_teacher(str(p14), 64, (8, 8), "cpu")
    assert teacher.in_size == 70 and tuple(teacher.vit.patch_embed.grid_size) == (5, 5)
    assert teacher(torch.rand(1, 3, 64, 64)).shape == (1, 65, 32)


def test_teacher_arch_overrides_are_used(tmp_path):
    path = save_random_teacher(tmp_path / "t.safetensors", embed_dim=48)
    with pytest.raises(DaatError, match="t.safetensors"):
        build_teacher(
            str(path), 64, (8, 8), arch_overrides={"embed_dim": 64}
        )  # weights are 48 wide


def test_teacher_errors_name_the_model(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="missing.safetensors"):
        build_teacher(str(tmp_path / "missing.safetensors"), 64, (8, 8))
    with pytest.raises(DataError, match="not_a_model"):
        build_teacher("not_a_model", 64, (8, 8))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DaatError, match=r"vit_small_patch14_dinov2\.lvd142m.*HF_HUB_OFFLINE"):
        build_teacher(
            "vit_small_patch14_dinov2.lvd142m",
            56,
            (4, 4),  # shrunk: only the download matters
            arch_overrides={"embed_dim": 32, "depth": 1, "num_heads": 2},
        )


def test_projection_only_when_widths_differ():
    assert isinstance(build_projection(64, 64), torch.nn.Identity)
    proj = build_projection(64, 48)
    assert isinstance(proj, FeatureProjection)
    assert proj(torch.rand(2, 65, 64)).shape == (2, 65, 48)
    student = tiny_vit(seed=7)
    assert not any(k.startswith("proj") for k in student.state_dict())


def test_the_student_is_a_plain_vit_unless_init_values_asks_for_layerscale():
    from daat import config as config_mod

    tiny = ["model.img_size=28", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"]
    cfg = config_mod.load(["imagenet100"], tiny)
    assert cfg.model.name == "vit_base_patch14_dinov2" and cfg.model.init_values is None
    plain = build_student(cfg.model, 10)
    assert not [n for n, _ in plain.named_parameters() if ".ls" in n]  # timm's DINOv2 has 1e-5
    scaled = build_student(
        config_mod.load(["imagenet100"], tiny + ["model.init_values=1e-5"]).model, 10
    )
    gammas = [p for n, p in scaled.named_parameters() if n.endswith(("ls1.gamma", "ls2.gamma"))]
    assert len(gammas) == 4 and all(torch.all(g == 1e-5) for g in gammas)
