"""The content-key tables: which settings make a new artifact of each kind, and which do not."""

from daat import config as C
from daat import keys
from daat.eval import report_figures


def test_shards_key_holds_data_and_depth_model_only():
    cfg = C.load(["pgd-at", "synthetic"])
    det = keys.determining("shards", cfg)
    assert set(det) == {"data", "depth"}
    assert det["depth"] == {"model": None}  # unset: preprocess fills in oracle for synthetic
    assert "num_workers" not in det["data"]
    changed = C.load(["pgd-at", "synthetic"], ["train.epochs=99", "data.num_workers=7"])
    assert keys.determining("shards", changed) == det
    assert (
        keys.determining("shards", C.load(["pgd-at", "synthetic"], ["data.jpeg_quality=80"])) != det
    )


def test_run_key_leaves_out_operational_and_switched_off_settings():
    base = C.load(["pgd-at", "synthetic"])
    det = keys.determining("run", base)
    assert "data" not in det and "eval" not in det and "preset" not in det
    noisy = C.load(
        ["pgd-at", "synthetic"],
        ["train.ckpt_every_steps=7", "depth.batch_size=3", "eval.n_samples=5", "loss.teacher=x"],
    )
    assert keys.determining("run", noisy) == det  # gamma0 = 0: the teacher cannot act
    assert keys.determining("run", C.load(["pgd-at", "synthetic"], ["train.batch_size=16"])) != det


def test_eval_key_is_its_section_minus_batch_size_and_the_dict_form_agrees():
    cfg = C.load(["synthetic"])
    det = keys.determining("eval", cfg)
    assert set(det) == {"eval"} and "batch_size" not in det["eval"]
    assert keys.determining("eval", C.to_dict(cfg)) == det
    assert "data.num_workers" in keys.RULES["eval"].free


def test_report_groups_runs_that_would_be_one_run_but_for_lambda():
    a = C.to_dict(C.load(["daat", "synthetic"], ["loss.lam=0.1"]))
    b = C.to_dict(C.load(["daat", "synthetic"], ["loss.lam=0.0", "train.log_every_steps=3"]))
    c = C.to_dict(C.load(["daat", "synthetic"], ["loss.lam=0.1", "train.batch_size=16"]))
    assert report_figures.lam_group_key(a) == report_figures.lam_group_key(b)
    assert report_figures.lam_group_key(a) != report_figures.lam_group_key(c)
