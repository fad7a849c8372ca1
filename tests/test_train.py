"""train_step and the depth-target policy, on tiny in-process models (no shards needed).

Every check compares against values computed independently here: the update against a hand
written Eq. 5 + clip + AdamW step on a copy of the model, the depth model's input against the
PGD output, the teacher and depth-model call counts against the configured schedule.
"""

import ast
import copy
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from daat import attacks
from daat import config as config_mod
from daat.errors import TrainingError
from daat.keys import determining as keys_determining
from daat.models import Outputs
from daat.train import step as step_mod
from daat.train.online_depth import DepthTarget, check_policy, wants_online
from daat.train.state import build_optimizer, build_state
from daat.train.step import NonFiniteGuard, StepSchedule, train_step
from daat.train.teacher import ResolvedTeacher, RunTeacher, standard_config
from daat.train.warm_start import effective

TINY = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=4",
    "attack.steps=2",
    "seed=3",
    "depth.target=cached",
    "train.init_from=",
]
CLASSES = 5


def tiny_cfg(*presets, overrides=()):
    return config_mod.load(list(presets) or ["daat", "synthetic"], TINY + list(overrides))


def batch(seed=0, n=4, size=32, grid=4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    g = torch.rand(n, grid * grid, generator=gen)
    return x, y, g / g.sum(1, keepdim=True)


class CountingTeacher(torch.nn.Module):
    """A frozen random linear map of the patches to [B, 1+N, D] tokens that counts its calls."""

    def __init__(self, dim=24, grid=4, patch=8):
        super().__init__()
        self.proj = torch.nn.Linear(3 * patch * patch, dim).requires_grad_(False)
        self.patch, self.calls, self.inputs = patch, 0, []

    def forward(self, x):
        self.calls += 1
        self.inputs.append(x)
        p = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # [B, N, 3*p*p]
        t = self.proj(p)
        return torch.cat([t.mean(1, keepdim=True), t], dim=1)


def resolved(teacher, dim=24):
    return ResolvedTeacher(teacher, "counting", [], dim)


class FakeDepth:
    """Stands in for load_depth_model(...): a 'depth' that is the mean channel; records inputs."""

    model_id = "fake-depth"

    def __init__(self):
        self.inputs = []

    def __call__(self, images):
        self.inputs.append(images.clone())
        return images.mean(1)


def never_load(*args, **kwargs):
    raise AssertionError("the depth model must not be loaded")


# -- the update itself -----------------------------------------------------------------------
def test_train_step_is_eq5_then_clip_then_adamw():
    """With PGD off (x_adv = x) the step must equal Eq. 5 computed by hand with separate forwards
    (adversarial with the tap, clean with tokens), global-norm clipping and one AdamW step."""
    cfg = tiny_cfg(
        overrides=["attack.steps=0", "loss.lam=0.7", "loss.gamma0=0.5", "optim.grad_clip=0.05"]
    )
    teacher = CountingTeacher()
    state = build_state(cfg, CLASSES, resolved(teacher), torch.device("cpu"))
    ref_model = copy.deepcopy(state.model)
    copy_before = [(n, p.detach().clone()) for n, p in ref_model.named_parameters()]
    ref_proj = copy.deepcopy(state.projection)
    x, y, g = batch()
    sched = StepSchedule(step=0, epoch=0, lr=3e-3, gamma=0.5, s=0.8)

    out = train_step(state, (x, y, g), sched)

    adv = ref_model.forward_tapped(x, need_attention=True)
    clean = ref_model.forward_tapped(x, need_tokens=True)
    ce = F.cross_entropy(adv.logits, y)
    align = (1 - F.cosine_similarity(adv.attention, g, dim=1)).mean()
    phi_s = ref_proj(clean.tokens).flatten(1)
    phi_t = teacher(x).flatten(1)
    feat = (1 - F.cosine_similarity(phi_s, phi_t, dim=1)).mean()
    loss = ce + 0.7 * 0.8 * align + 0.5 * feat
    for name, value in (("ce", ce), ("align", align), ("feat", feat), ("loss", loss)):
        assert out[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
    ref_opt = build_optimizer(cfg, ref_model, ref_proj)
    for group in ref_opt.param_groups:
        group["lr"] = 3e-3
    loss.backward()
    params = list(ref_model.parameters()) + list(ref_proj.parameters())
    norm = torch.nn.utils.clip_grad_norm_(params, 0.05)
    assert norm > 0.05  # the clip is active, so it is being tested
    ref_opt.step()
    # Adam's first step is lr * g / (|g| + 1e-8): for near-zero gradients a float-summation
    # difference between one batched forward and two separate ones moves an element by a few
    # 1e-3 of lr, so the tolerance is 1e-3 * lr, still far below a single step (lr = 3e-3).
    for (name, p), q in zip(ref_model.named_parameters(), state.model.parameters()):
        assert not torch.equal(p, dict(copy_before)[name]), name  # every weight moved
        torch.testing.assert_close(q, p, rtol=0, atol=3e-6, msg=lambda m, name=name: f"{name}: {m}")
    assert out["nonfinite"].item() == 0.0


def independent_g(depth: torch.Tensor, grid: int) -> torch.Tensor:
    """Eq. 1 written out: Sobel magnitude (replicate border) by conv2d, block mean onto the patch
    grid, divided by the sum."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = F.pad(depth.unsqueeze(1), (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx.view(1, 1, 3, 3))
    gy = F.conv2d(padded, kx.t().contiguous().view(1, 1, 3, 3))
    e = torch.sqrt(gx**2 + gy**2)
    pooled = F.avg_pool2d(e, depth.shape[-1] // grid).flatten(1)
    return pooled / pooled.sum(1, keepdim=True)


def test_train_step_with_pgd_and_online_g_is_eq5(tiny_dpt_dir):
    """PGD on and G(x_adv) from a real (tiny) DPT every step: the step equals an independent
    Eq. 5 -- PGD written out with the same random start, the depth model on its output, Eq. 1 by
    conv2d, Eq. 2 and 3, clip, one AdamW step -- on a copy of the model."""
    from daat.depth import load_depth_model

    cfg = tiny_cfg(
        overrides=[
            "attack.steps=3",
            "loss.lam=0.7",
            "loss.gamma0=0.5",
            "optim.grad_clip=0.05",
            "depth.target=online",
            f"depth.model={tiny_dpt_dir}",
        ]
    )
    teacher = CountingTeacher()
    state = build_state(cfg, CLASSES, resolved(teacher), torch.device("cpu"))
    ref_model, ref_proj = copy.deepcopy(state.model), copy.deepcopy(state.projection)
    start = torch.Generator().set_state(state.generator.get_state())
    x, y, g_cached = batch()
    sched = StepSchedule(step=0, epoch=0, lr=3e-3, gamma=0.5, s=0.8)

    out = train_step(state, (x, y, g_cached), sched)

    eps, alpha = cfg.attack.eps, cfg.attack.alpha
    ref_model.eval()
    x_adv = (x + (torch.rand(x.shape, generator=start) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(3):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(ref_model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps)
        x_adv = x_adv.clamp(0, 1)
    ref_model.zero_grad(set_to_none=True)
    ref_model.train()
    with torch.no_grad():
        g_adv = independent_g(load_depth_model(str(tiny_dpt_dir), "cpu")(x_adv).float(), 4)
    adv = ref_model.forward_tapped(x_adv, need_attention=True)
    clean = ref_model.forward_tapped(x, need_tokens=True)
    ce = F.cross_entropy(adv.logits, y)
    align = (1 - F.cosine_similarity(adv.attention, g_adv, dim=1)).mean()
    feat = (
        1 - F.cosine_similarity(ref_proj(clean.tokens).flatten(1), teacher(x).flatten(1), dim=1)
    ).mean()
    loss = ce + 0.7 * 0.8 * align + 0.5 * feat
    assert state.depth_target.online_calls == 1
    assert not torch.allclose(g_adv, g_cached)  # the cached G would give another loss
    for name, value in (("ce", ce), ("align", align), ("feat", feat), ("loss", loss)):
        assert out[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
    ref_opt = build_optimizer(cfg, ref_model, ref_proj)
    for group in ref_opt.param_groups:
        group["lr"] = 3e-3
    loss.backward()
    params = list(ref_model.parameters()) + list(ref_proj.parameters())
    assert torch.nn.utils.clip_grad_norm_(params, 0.05) > 0.05  # the clip acts
    ref_opt.step()
    # As in the PGD-off test, Adam's first step is lr * g / (|g| + 1e-8): a near-zero gradient
    # computed in another summation order moves its element by a few 1e-3 of lr (3.2e-6 seen
    # after other tests ran first); 1e-5 is still 300 times below one step (lr = 3e-3).
    for (name, p), q in zip(ref_model.named_parameters(), state.model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_optimizer_groups_skip_decay_on_norms_biases_tokens():
    cfg = tiny_cfg(
        "pgd-at",
        "synthetic",
        overrides=[
            "model.name=vit_base_patch14_dinov2",
            "model.init_values=1e-5",
            "model.stem=patch",
        ],
    )
    state = build_state(cfg, CLASSES, None, torch.device("cpu"))
    names = {id(p): n for n, p in state.model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in state.optimizer.param_groups)
    assert state.optimizer.param_groups[0]["weight_decay"] == cfg.optim.weight_decay
    assert state.optimizer.param_groups[1]["weight_decay"] == 0.0
    assert {
        "vit.pos_embed",
        "vit.cls_token",
        "vit.norm.weight",
        "vit.norm.bias",
        "vit.blocks.0.attn.qkv.bias",
        "vit.blocks.0.ls1.gamma",
    } <= no_decay
    assert {
        "vit.blocks.0.attn.qkv.weight",
        "vit.head.weight",
        "vit.patch_embed.proj.weight",
    } <= decay
    assert len(decay) + len(no_decay) == len(names)
    # ConvStem: its convolutions decay, its channel LayerNorms do not
    conv = build_state(
        tiny_cfg("pgd-at", "synthetic", overrides=["model.stem=conv"]),
        CLASSES,
        None,
        torch.device("cpu"),
    )
    names = {id(p): n for n, p in conv.model.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in conv.optimizer.param_groups)
    assert {"vit.patch_embed.proj.0.weight", "vit.patch_embed.proj.9.weight"} <= decay
    assert {
        "vit.patch_embed.proj.1.weight",
        "vit.patch_embed.proj.1.bias",
        "vit.patch_embed.proj.9.bias",
    } <= no_decay


def test_pgd_runs_on_frozen_weights_and_feeds_the_update(monkeypatch):
    cfg = tiny_cfg("pgd-at", "synthetic", overrides=["attack.steps=3"])
    state = build_state(cfg, CLASSES, None, torch.device("cpu"))
    seen = {}
    real = attacks.pgd

    grads_on = []
    state.model.register_forward_pre_hook(  # PGD calls model(x); the update uses forward_tapped
        lambda m, args: grads_on.append(any(p.requires_grad for p in m.parameters()))
    )

    def spy(model, x, y, **kw):
        result = real(model, x, y, **kw)
        seen["x_adv"] = result.x_adv
        seen["kw"] = kw
        return result

    forward_inputs = []
    real_forward = state.forward.forward
    monkeypatch.setattr(step_mod, "pgd", spy)
    monkeypatch.setattr(
        state.forward,
        "forward",
        lambda x_adv, x_clean, att: (
            forward_inputs.append(x_adv) or real_forward(x_adv, x_clean, att)
        ),
    )
    x, y, g = batch()
    train_step(state, (x, y, g), StepSchedule(0, 0, 1e-3))
    assert seen["kw"]["steps"] == 3 and seen["kw"]["eps"] == cfg.attack.eps
    assert seen["kw"]["generator"] is state.generator
    assert grads_on == [False] * 3  # weights frozen in each of the 3 attack forwards
    assert torch.equal(forward_inputs[0], seen["x_adv"])  # the update trains on the attack's output
    assert (seen["x_adv"] - x).abs().max() <= cfg.attack.eps + 1e-6
    assert not torch.equal(seen["x_adv"], x)
    assert all(p.requires_grad for p in state.model.parameters())  # restored afterwards


def test_nan_loss_is_flagged_and_the_guard_names_the_step():
    cfg = tiny_cfg("pgd-at", "synthetic", overrides=["attack.steps=0"])
    state = build_state(cfg, CLASSES, None, torch.device("cpu"))
    x, y, g = batch()
    guard = NonFiniteGuard(torch.device("cpu"), steps_per_epoch=5)
    out = train_step(state, (x, y, g), StepSchedule(0, 0, 1e-3))
    guard.update(out["nonfinite"], 0)
    guard.check()
    x[1, 0, 3, 3] = float("nan")
    out = train_step(state, (x, y, g), StepSchedule(7, 1, 1e-3))
    assert out["nonfinite"].item() == 1.0
    guard.update(out["nonfinite"], 7)
    guard.update(torch.tensor(1.0), 8)  # later bad steps do not overwrite the first
    with pytest.raises(TrainingError, match=r"step 7 \(epoch 1\)"):
        guard.check()


# -- L_feat and the teacher ------------------------------------------------------------------
def test_teacher_runs_on_clean_x_only_while_gamma_positive():
    cfg = tiny_cfg(overrides=["depth.target=cached", "attack.steps=2"])
    teacher = CountingTeacher()
    state = build_state(cfg, CLASSES, resolved(teacher), torch.device("cpu"))
    x, y, g = batch()
    out = train_step(state, (x, y, g), StepSchedule(0, 0, 1e-3, gamma=1.0))
    assert teacher.calls == 1 and teacher.inputs[0] is not None
    torch.testing.assert_close(teacher.inputs[0], x)  # clean x, not x_adv
    assert out["feat"].item() > 0
    out = train_step(state, (x, y, g), StepSchedule(1, 3, 1e-3, gamma=0.0))
    assert teacher.calls == 1 and out["feat"].item() == 0.0


def test_run_teacher_gives_final_norm_tokens_and_stays_frozen():
    cfg = tiny_cfg("pgd-at", "synthetic")
    student = build_state(cfg, CLASSES, None, torch.device("cpu")).model
    teacher = RunTeacher(copy.deepcopy(student))
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = batch()[0]
    expected = student.vit.forward_features(student.normalize(x))
    torch.testing.assert_close(teacher(x), expected)


def test_standard_config_and_content_key_match_a_standard_preset_run():
    daat = tiny_cfg("daat", "synthetic", overrides=["loss.teacher=run:standard"])
    standard = tiny_cfg(
        "standard", "synthetic", overrides=["loss.teacher=run:standard", "attack.steps=0"]
    )
    derived = standard_config(daat)
    assert derived.attack.steps == 0 and derived.loss.lam == 0 and derived.loss.gamma0 == 0
    assert determining(derived) == determining(standard)
    assert determining(daat) != determining(derived)
    # purely operational keys never change the run
    noisy = tiny_cfg(
        "daat",
        "synthetic",
        overrides=["train.log_every_steps=3", "device=cpu", "data.num_workers=0"],
    )
    assert determining(noisy) == determining(tiny_cfg("daat", "synthetic"))


def determining(cfg):
    """The run's content key as ``loop.run`` computes it (after ``warm_start.effective``)."""
    return keys_determining("run", effective(cfg))


def test_eps_warmup_scales_the_training_attack(monkeypatch):
    cfg = tiny_cfg("pgd-at", "synthetic")
    state = build_state(cfg, CLASSES, None, torch.device("cpu"))
    seen = []
    real = step_mod.pgd

    def spy(model, x, y, **kw):
        seen.append((kw["eps"], kw["alpha"], kw["steps"]))
        return real(model, x, y, **kw)

    monkeypatch.setattr(step_mod, "pgd", spy)
    train_step(state, batch(), StepSchedule(0, 0, 1e-3, eps_scale=0.25))
    train_step(state, batch(), StepSchedule(1, 0, 1e-3))
    eps, alpha = 4 / 255, 1 / 255
    assert seen == [
        (pytest.approx(eps / 4), pytest.approx(alpha / 4), 2),
        (pytest.approx(eps), pytest.approx(alpha), 2),
    ]


def test_ema_update_is_a_lerp_towards_the_updated_weights():
    state = build_state(
        tiny_cfg("pgd-at", "synthetic", overrides=["train.ema_decay=0.9"]),
        CLASSES,
        None,
        torch.device("cpu"),
    )
    assert not state.ema.training and not any(p.requires_grad for p in state.ema.parameters())
    before = {n: p.clone() for n, p in state.ema.named_parameters()}
    train_step(state, batch(), StepSchedule(0, 0, 1e-2, ema_decay=0.3))
    model = dict(state.model.named_parameters())
    for name, p in state.ema.named_parameters():
        assert not torch.equal(before[name], model[name]), name  # the step moved the weight
        torch.testing.assert_close(
            p,
            0.3 * before[name] + 0.7 * model[name].detach(),
            rtol=0,
            atol=1e-6,
            msg=lambda m, name=name: f"{name}: {m}",
        )
    assert (
        build_state(tiny_cfg("pgd-at", "synthetic"), CLASSES, None, torch.device("cpu")).ema is None
    )


def test_warm_start_effective_config():
    pgd = tiny_cfg(
        "pgd-at",
        "synthetic",
        overrides=["train.init_from=run:standard", "train.epochs=30", "train.finetune_epochs=4"],
    )
    assert effective(pgd).train.epochs == 4 and effective(effective(pgd)) == effective(pgd)
    assert pgd.train.epochs == 30  # the given config is not modified
    std = tiny_cfg(
        "standard",
        "synthetic",
        overrides=[
            "train.init_from=run:standard",
            "attack.steps=0",
            "train.epochs=30",
            "train.finetune_epochs=4",
        ],
    )
    assert effective(std).train.init_from == "" and effective(std).train.epochs == 30
    no_ft = tiny_cfg(
        "pgd-at", "synthetic", overrides=["train.init_from=run:/x/run-1", "train.finetune_epochs=0"]
    )
    assert effective(no_ft).train.epochs == no_ft.train.epochs  # finetune_epochs 0: train.epochs


def test_content_key_ignores_knobs_that_cannot_act():
    base = tiny_cfg("standard", "synthetic", overrides=["attack.steps=0"])
    # an eps warm-up means nothing without an attack; run:standard means nothing to a standard run
    for extra in (
        ["attack.eps_warmup_epochs=2"],
        ["train.init_from=run:standard"],
        ["train.finetune_epochs=3"],
    ):
        assert determining(
            tiny_cfg("standard", "synthetic", overrides=["attack.steps=0", *extra])
        ) == determining(base)
    pgd = tiny_cfg("pgd-at", "synthetic")
    assert determining(
        tiny_cfg("pgd-at", "synthetic", overrides=["attack.eps_warmup_epochs=2"])
    ) != determining(pgd)
    assert determining(
        tiny_cfg("pgd-at", "synthetic", overrides=["train.finetune_epochs=3"])
    ) == determining(pgd)
    derived = standard_config(
        tiny_cfg(
            "daat",
            "synthetic",
            overrides=["train.init_from=run:standard", "train.finetune_epochs=3"],
        )
    )
    assert derived.train.init_from == ""
    assert determining(derived) == determining(
        tiny_cfg(
            "standard",
            "synthetic",
            overrides=["train.init_from=run:standard", "train.finetune_epochs=3", "attack.steps=0"],
        )
    )


def test_bad_init_from_is_a_config_error():
    with pytest.raises(config_mod.ConfigError, match="train.init_from"):
        tiny_cfg(overrides=["train.init_from=/some/run"])


# -- the depth-target policy -----------------------------------------------------------------
def test_cached_never_loads_the_depth_model():
    cfg = tiny_cfg(overrides=["depth.target=cached"])
    target = DepthTarget(cfg, (4, 4), torch.device("cpu"), loader=never_load)
    state = build_state(cfg, CLASSES, None, torch.device("cpu"))
    state.depth_target = target
    x, y, g = batch()
    for i in range(3):
        train_step(state, (x, y, g), StepSchedule(i, i, 1e-3))
    assert target.online_calls == 0


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["depth.target=online"], [True] * 6),
        (["depth.target=mixed", "depth.online_every=2"], [True, False, True, False, True, False]),
        (
            ["depth.target=mixed", "depth.online_epochs=[1,2]"],
            [False, False, True, True, False, False],
        ),
    ],
)
def test_online_and_mixed_call_the_depth_model_on_x_adv(monkeypatch, overrides, expected):
    """Six steps, two per epoch: the depth model runs exactly on the configured steps, on the
    very tensor PGD returned, and its G is what L_align compares A(x_adv) with."""
    cfg = tiny_cfg(overrides=overrides + ["depth.model=/nonexistent/depth"])
    fake = FakeDepth()
    state = build_state(cfg, CLASSES, None, torch.device("cpu"))
    state.depth_target = DepthTarget(cfg, (4, 4), torch.device("cpu"), loader=lambda *a, **k: fake)
    pgd_outputs, targets = [], []
    real_pgd, real_align = attacks.pgd, step_mod.align_loss

    def spy_pgd(*args, **kw):
        result = real_pgd(*args, **kw)
        pgd_outputs.append(result.x_adv)
        return result

    monkeypatch.setattr(step_mod, "pgd", spy_pgd)
    monkeypatch.setattr(step_mod, "align_loss", lambda a, t: targets.append(t) or real_align(a, t))
    x, y, g = batch()
    calls = []
    for step in range(6):
        before = len(fake.inputs)
        train_step(state, (x, y, g), StepSchedule(step, step // 2, 1e-3))
        calls.append(len(fake.inputs) > before)
        if calls[-1]:
            assert torch.equal(fake.inputs[-1], pgd_outputs[-1])
            assert not torch.equal(fake.inputs[-1], x)
            from daat.saliency import depth_saliency

            torch.testing.assert_close(targets[-1], depth_saliency(pgd_outputs[-1].mean(1), (4, 4)))
        else:
            torch.testing.assert_close(targets[-1], g)
    assert calls == expected
    assert state.depth_target.online_calls == sum(expected)


def test_policy_checks():
    assert not wants_online(tiny_cfg(overrides=["depth.target=cached"]), 0, 0)
    with pytest.raises(config_mod.ConfigError, match="oracle"):
        check_policy(tiny_cfg(overrides=["depth.target=online", "depth.model=oracle"]))
    with pytest.raises(config_mod.ConfigError, match="online_every"):
        tiny_cfg(overrides=["depth.target=mixed", "depth.model=x"])
    check_policy(
        tiny_cfg(overrides=["depth.target=online", "depth.model=oracle", "loss.lam=0"])
    )  # no L_align: the target is never needed


def test_train_forward_batches_adv_and_clean_like_two_forwards():
    cfg = tiny_cfg("pgd-at", "synthetic")
    state = build_state(cfg, CLASSES, None, torch.device("cpu"))
    x, _, _ = batch()
    x_adv = (x + 0.01).clamp(0, 1)
    logits, attention, tokens = state.forward(x_adv, x, True)
    adv: Outputs = state.model.forward_tapped(x_adv, need_attention=True)
    clean: Outputs = state.model.forward_tapped(x, need_tokens=True)
    torch.testing.assert_close(logits, adv.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attention, adv.attention, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tokens, clean.tokens, rtol=1e-5, atol=1e-6)


# -- which depth model computes G(x_adv) ------------------------------------------------------
def test_depth_model_is_the_shards_own_unless_allowed_otherwise(tiny_dpt_dir, tmp_path):
    from types import SimpleNamespace

    from daat.depth_ref import dir_hash
    from daat.tiny_models import save_tiny_dpt
    from daat.train.online_depth import resolve_model

    shards = SimpleNamespace(
        config={"depth": {"model": str(tiny_dpt_dir)}},
        depth_model=f"{tiny_dpt_dir}@{dir_hash(tiny_dpt_dir)}",
        path=tmp_path / "shards-x",
    )
    online = ["depth.target=online"]
    unset = tiny_cfg(overrides=online)
    assert unset.depth.model is None
    assert resolve_model(unset, shards).depth.model == str(tiny_dpt_dir)  # read from the shards
    assert unset.depth.model is None  # the caller's config is left alone
    moved = shutil.copytree(tiny_dpt_dir, tmp_path / "moved")  # the same files elsewhere
    assert resolve_model(tiny_cfg(overrides=online + [f"depth.model={moved}"]), shards)
    other = save_tiny_dpt(tmp_path / "other", image_size=32)
    mismatch = tiny_cfg(overrides=online + [f"depth.model={other}"])
    with pytest.raises(
        config_mod.ConfigError,
        match=r"not the depth model the shards were made "
        r"with.*depth.allow_other_model=true",
    ):
        resolve_model(mismatch, shards)
    allowed = tiny_cfg(overrides=online + [f"depth.model={other}", "depth.allow_other_model=true"])
    assert resolve_model(allowed, shards).depth.model == str(other)
    cached = tiny_cfg(overrides=[f"depth.model={other}"])  # G(x) from the shards: no conflict
    assert resolve_model(cached, shards).depth.model == str(other)


def test_train_depth_option_sets_the_depth_model(tiny_shards, tiny_dpt_dir, tmp_path):
    from click.testing import CliRunner

    from daat.cli import main

    result = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            "daat",
            "--config",
            "synthetic",
            "--shards",
            str(tiny_shards.path),
            "--depth",
            str(tiny_dpt_dir),
            "--out",
            str(tmp_path),
            "--set",
            "depth.target=online",
        ],
    )
    assert result.exit_code == 2, result.output
    assert f"config key 'depth.model' = '{tiny_dpt_dir}' is not the depth model" in result.stderr


# -- module boundaries (docs/ARCHITECTURE.md, Stage 2) ------------------------------------------

TRAIN_DIR = Path(__file__).resolve().parents[1] / "train"
NOT_IMPORTED = {
    "losses": ("daat",),
    "schedules": ("daat",),
    "step": ("daat.pipeline", "daat.artifacts", "daat.train.checkpoint", "daat.train.loop"),
    "state": ("daat.pipeline", "daat.artifacts", "daat.train.checkpoint", "daat.train.loop"),
    "validate": ("daat.artifacts", "daat.train.checkpoint", "daat.train.state", "daat.train.loop"),
    "run_artifact": ("daat.models", "daat.train.step", "daat.train.state", "daat.train.loop"),
    "teacher": ("daat.train.loop", "daat.train.standard_first"),
    "warm_start": ("daat.train.loop", "daat.train.standard_first"),
    "checkpoint": ("daat.train.loop", "daat.train.step", "daat.train.state"),
    "online_depth": ("daat.train.loop", "daat.train.step", "daat.train.run_artifact"),
    "loggers": ("daat.train.loop", "daat.train.step", "daat.train.state"),
    "loop": ("daat.train.standard_first",),
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_train_modules_keep_their_import_boundaries():
    for path in sorted(TRAIN_DIR.glob("*.py")):
        imported = imported_modules(path)
        assert not any(n.startswith("daat.eval") for n in imported), path.name  # train <- eval
        banned = NOT_IMPORTED.get(path.stem, ())
        bad = sorted(n for n in imported if any(n == b or n.startswith(b + ".") for b in banned))
        assert not bad, f"{path.name} imports {bad}"
    # only the stand-in's trainer calls back into the loop
    callers = [p.stem for p in TRAIN_DIR.glob("*.py") if "daat.train.loop" in imported_modules(p)]
    assert callers == ["standard_first"]
