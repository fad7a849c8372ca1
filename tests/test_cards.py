"""Data cards: schema, packaged cards, inferred ImageFolder cards, listing, fingerprints."""

import logging
import warnings
from importlib import resources
from pathlib import Path

import pytest
import yaml

from daat import synthetic
from daat.cards import CardWarning, SourceItem, card_names, load_card
from daat.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def make_folder(root: Path, layout: dict[str, dict[str, list[str]]]) -> Path:
    """layout: split -> class -> file names (may contain sub-directories)."""
    for split, classes in layout.items():
        for cls, names in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for name in names:
                (root / split / cls / name).parent.mkdir(parents=True, exist_ok=True)
                (root / split / cls / name).write_bytes(b"x" * (len(name) + 1))
    return root


LAYOUT = {
    "train": {"dog": ["b.jpg", "a.JPG", "notes.txt", "sub/c.png"], "cat": ["z.jpeg"]},
    "val": {"dog": ["v1.webp"], "cat": ["v2.bmp", "v3.TIFF"]},
}


def write_card(path: Path, **fields) -> Path:
    card = {"name": "pets", "kind": "imagefolder", "classes": ["cat", "dog"], **fields}
    path.write_text(yaml.safe_dump(card))
    return path


# --- packaged cards --------------------------------------------------------------------------


def test_packaged_cards_load_and_match_their_files():
    assert {"imagenet100", "imagefolder", "synthetic", "synthetic-spurious"} <= set(card_names())
    inet = load_card("imagenet100")
    wnids = resources.files("daat.data").joinpath("imagenet100_wnids.txt").read_text().split()
    assert inet.kind == "imagefolder" and inet.classes == wnids and inet.num_classes == 100
    assert inet.expected_counts == {"train": 126689, "val": 5000}
    assert inet.class_names[wnids.index("n01749939")] == "green mamba"
    assert "non-commercial" in inet.to_dict()["licence"]
    syn = load_card("synthetic")
    assert syn.classes == list(synthetic.CLASSES) and syn.root is None
    assert syn.synthetic == {
        "n_train_per_class": 160,
        "n_val_per_class": 40,
        "size": 64,
        "spurious": False,
        "seed": 0,
        "spurious_rate": 0.9,
        "clutter": 0.0,
    }
    assert syn.expected_counts == {"train": 1600, "val": 400}
    spur = load_card("synthetic-spurious")
    assert spur.synthetic["spurious"] is True
    # The same scenes, apart from the forced textures.
    seeds = [[i.synthetic.seed for i in c.items("val")] for c in (spur, syn)]
    assert seeds[0] == seeds[1]


def test_synthetic_large_holds_the_synthetic_cards_scenes_first():
    large, syn = load_card("synthetic-large"), load_card("synthetic")
    assert large.expected_counts == {"train": 10000, "val": 1000}
    for split in ("train", "val"):
        small = syn.items(split)
        assert [(i.synthetic.seed, i.label) for i in large.items(split)[: len(small)]] == [
            (i.synthetic.seed, i.label) for i in small
        ]


def test_a_card_path_loads_the_same_card_as_its_name():
    assert (
        load_card(REPO / "data_cards" / "synthetic.yaml").to_dict()
        == load_card("synthetic").to_dict()
    )


def test_the_template_card_needs_a_root_then_infers_classes(tmp_path):
    with pytest.raises(DataError, match="give --root"):
        load_card("imagefolder")
    card = load_card("imagefolder", make_folder(tmp_path, LAYOUT))
    assert card.classes == ["cat", "dog"]


@pytest.mark.parametrize(
    "name", ["imagenet100", "synthetic", "synthetic-spurious", "synthetic-large"]
)
def test_to_dict_is_itself_a_valid_card_that_round_trips(tmp_path, name):
    resolved = load_card(name).to_dict()
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(resolved))
    assert load_card(saved).to_dict() == resolved


def test_synthetic_items_carry_the_render_recipe_and_ignore_root(tmp_path):
    with pytest.warns(CardWarning, match="ignored"):
        card = load_card("synthetic", tmp_path)
    assert card.root is None
    items = card.items("val")
    assert len(items) == 400 and [i.index for i in items] == list(range(400))
    first = items[0]
    assert isinstance(first, SourceItem) and first.path is None and first.synthetic is not None
    assert (first.label, first.synthetic.label, first.relpath) == (0, 0, "synthetic/val/000000")


# --- validation errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"clases": ["a"]}, "unknown key 'clases'"),
        ({"kind": "lmdb"}, "key 'kind'"),
        ({"name": ""}, "key 'name'"),
        ({"classes": "guess"}, "key 'classes'"),
        ({"classes": ["a", "b", "a"]}, "repeats a"),
        ({"classes": {"file": "nope.txt"}}, "'nope.txt' not found"),
        ({"expected_counts": {"train": "many"}}, "expected_counts.train"),
        ({"expected_counts": {"test": 3}}, "expected_counts.test"),
        ({"splits": {"train": "../elsewhere"}}, "splits.train"),
        ({"extensions": []}, "key 'extensions'"),
        ({"class_names": {"cow": "a cow"}}, "class_names"),
        ({"synthetic": {"seed": 0}}, "key 'synthetic'"),
    ],
)
def test_bad_card_is_an_error_naming_file_and_key(tmp_path, fields, needle):
    path = write_card(tmp_path / "bad.yaml", **fields)
    with pytest.raises(DataError, match=needle) as info:
        load_card(path)
    assert str(path) in str(info.value)


def test_missing_required_keys_and_bad_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kind: imagefolder\nclasses: [a]\n")
    with pytest.raises(DataError, match="missing required key 'name'"):
        load_card(path)
    path.write_text("name: x\nkind: imagefolder\n")
    with pytest.raises(DataError, match="missing required key 'classes'"):
        load_card(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(DataError, match="invalid YAML"):
        load_card(path)


@pytest.mark.parametrize(
    "spec_change, needle", [({"colour": 1}, "unknown key 'colour'"), ({"size": 0}, "'size'")]
)
def test_bad_synthetic_block_names_the_key(tmp_path, spec_change, needle):
    spec = {**load_card("synthetic").synthetic, **spec_change}
    path = tmp_path / "syn.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "kind": "synthetic", "synthetic": spec}))
    with pytest.raises(DataError, match=needle):
        load_card(path)


def test_synthetic_counts_must_agree_with_the_spec(tmp_path):
    raw = yaml.safe_load((REPO / "data_cards" / "synthetic.yaml").read_text())
    raw["expected_counts"]["train"] = 1599
    path = tmp_path / "syn.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match="1599 but the synthetic spec makes 1600"):
        load_card(path)


def test_unknown_card_and_bad_root(tmp_path):
    with pytest.raises(DataError, match="not found.*imagenet100"):
        load_card("no-such-card")
    missing = tmp_path / "missing"
    with pytest.raises(DataError, match=str(missing)):
        load_card("imagenet100", missing)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a directory"):
        load_card("imagenet100", tmp_path / "file")
    with pytest.raises(DataError, match="give --root"):
        load_card("imagenet100").items("train")


def test_missing_class_folder_is_an_error_naming_it(tmp_path):
    root = make_folder(tmp_path / "data", LAYOUT)
    card = load_card(write_card(tmp_path / "c.yaml", classes=["cat", "dog", "bird"]), root)
    with pytest.raises(DataError, match=r"bird.*missing") as info:
        card.items("train")
    assert str(root / "train" / "bird") in str(info.value)
    with pytest.raises(DataError, match="split 'test'"):
        card.items("test")


def test_missing_split_directory_is_an_error_naming_it(tmp_path):
    root = make_folder(tmp_path / "data", {"train": LAYOUT["train"]})
    card = load_card(write_card(tmp_path / "c.yaml"), root)
    with pytest.raises(DataError, match=str(root / "val")):
        card.items("val")


# --- inferred cards and listing --------------------------------------------------------------


def test_card_inferred_from_an_imagefolder_directory(tmp_path):
    root = make_folder(tmp_path / "pets", LAYOUT)
    (root / "train" / ".cache").mkdir()  # hidden directories are not classes
    card = load_card(root)
    assert (card.name, card.kind, card.root) == ("pets", "imagefolder", root.resolve())
    assert card.classes == ["cat", "dog"] and card.splits == {"train": "train", "val": "val"}
    items = card.items("train")
    # Sorted by class (label order), then path; extensions case-insensitive; sub-dirs read.
    assert [(i.index, i.label, i.relpath) for i in items] == [
        (0, 0, "train/cat/z.jpeg"),
        (1, 1, "train/dog/a.JPG"),
        (2, 1, "train/dog/b.jpg"),
        (3, 1, "train/dog/sub/c.png"),
    ]
    assert items[1].path == root.resolve() / "train/dog/a.JPG" and items[1].synthetic is None
    assert [i.relpath for i in card.items("val")] == [
        "val/cat/v2.bmp",
        "val/cat/v3.TIFF",
        "val/dog/v1.webp",
    ]
    # The inferred card is recorded in full and reloads as the same card.
    saved = tmp_path / "inferred.yaml"
    saved.write_text(yaml.safe_dump(card.to_dict()))
    assert load_card(saved, root).items("train") == items


def test_listing_does_not_depend_on_creation_order(tmp_path):
    names = [f"img{i:02d}.jpg" for i in range(12)]
    a = make_folder(tmp_path / "a", {"train": {"c": names}})
    b = make_folder(tmp_path / "b", {"train": {"c": names[::-1]}})
    rel = [i.relpath for i in load_card(a).items("train")]
    assert rel == [i.relpath for i in load_card(b).items("train")] == sorted(rel)
    assert load_card(a).items("train") == load_card(a).items("train")


def test_inference_needs_train_or_val_and_a_consistent_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not an ImageFolder directory"):
        load_card(tmp_path / "empty")
    root = make_folder(tmp_path / "pets", LAYOUT)
    with pytest.raises(DataError, match="points elsewhere"):
        load_card(root, tmp_path / "empty")
    assert load_card(root, root).root == root.resolve()


def test_a_packaged_name_wins_over_a_same_named_directory(tmp_path, monkeypatch):
    make_folder(tmp_path / "synthetic", LAYOUT)
    monkeypatch.chdir(tmp_path)
    assert load_card("synthetic").kind == "synthetic"
    assert load_card("./synthetic").kind == "imagefolder"


def test_class_file_beside_the_card(tmp_path):
    (tmp_path / "classes.txt").write_text("# my classes\ndog\n\ncat  # felines\n")
    card = load_card(
        write_card(
            tmp_path / "c.yaml", classes={"file": "classes.txt"}, class_names={"cat": "house cat"}
        )
    )
    assert card.classes == ["dog", "cat"] and card.class_names == ["dog", "house cat"]


def test_count_mismatch_and_empty_class_warn_with_both_numbers(tmp_path, caplog):
    root = make_folder(tmp_path / "data", LAYOUT)
    (root / "val" / "bird").mkdir()
    card = load_card(write_card(tmp_path / "c.yaml", expected_counts={"train": 99, "val": 3}), root)
    with caplog.at_level(logging.WARNING, logger="daat.cards"):
        with pytest.warns(CardWarning, match="has 4 images but the card expects 99"):
            card.items("train")
    assert "has 4 images but the card expects 99" in caplog.text
    with warnings.catch_warnings():
        warnings.simplefilter("error", CardWarning)
        assert len(card.items("val")) == 3  # matches: no warning
    bird = load_card(write_card(tmp_path / "c2.yaml", classes=["bird", "cat"]), root)
    with pytest.warns(CardWarning, match="has no images"):
        bird.items("val")


# --- fingerprints ----------------------------------------------------------------------------


def test_fingerprint_follows_the_inputs(tmp_path):
    root = make_folder(tmp_path / "pets", LAYOUT)
    card = load_card(root)
    before = card.input_fingerprint("train")
    assert card.input_fingerprint("train") == before
    assert card.input_fingerprint("val") != before
    (root / "train/dog/a.JPG").write_bytes(b"longer content than before")
    grown = card.input_fingerprint("train")
    assert grown != before
    (root / "train/cat/new.png").write_bytes(b"x")
    assert card.input_fingerprint("train") != grown
    (root / "train/cat/ignored.txt").write_bytes(b"x")  # not an image extension: no change
    assert load_card(root).input_fingerprint("train") == card.input_fingerprint("train")


def test_synthetic_fingerprint_follows_spec_split_and_renderer(tmp_path, monkeypatch):
    card = load_card("synthetic")
    base = card.input_fingerprint("train")
    assert card.input_fingerprint("val") != base
    assert load_card("synthetic-spurious").input_fingerprint("train") != base
    monkeypatch.setattr(synthetic, "RENDER_VERSION", synthetic.RENDER_VERSION + 1)
    assert card.input_fingerprint("train") != base
