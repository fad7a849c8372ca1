"""The shard writer process of ``daat preprocess``: what it writes, and that its failures reach the
parent loudly and never leave a shard under its final name."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from daat.errors import ShardFormatError
from daat.pipeline import shards as fmt
from daat.pipeline.records import Record
from daat.pipeline.saliency_codec import quantise_saliency, saliency_codes
from daat.pipeline.sink import ShardSink, SinkError
from daat.saliency import sobel_magnitude


def _record(i: int, shard: int = 0, **fields) -> Record:
    return Record(
        split="train",
        shard=shard,
        key=fmt.sample_key("train", i),
        label=i % 3,
        relpath=f"c/{i}.jpg",
        jpg=_jpeg(i),
        orig_hw=(8, 10),
        depth_model="m",
        **fields,
    )


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), (10 * i, 0, 0)).save(buf, format="JPEG")
    return buf.getvalue()


def _plan(shards: dict[int, range]) -> dict:
    return {
        ("train", s): [(fmt.sample_key("train", i), f"c/{i}.jpg") for i in idx]
        for s, idx in shards.items()
    }


def test_codes_equal_the_quantised_sobel_of_each_map_whatever_the_mix_of_sizes():
    depths = [torch.rand(8, 10), torch.rand(6, 6), torch.rand(8, 10)]
    codes = saliency_codes(depths, torch.device("cpu"))
    for depth, (q, scale) in zip(depths, codes, strict=True):
        q_ref, scale_ref = quantise_saliency(sobel_magnitude(depth[None]))
        np.testing.assert_array_equal(q, q_ref[0].numpy())
        assert scale == float(scale_ref[0])


@pytest.mark.parametrize("processes", [1, 2])
def test_writes_depth_maps_precomputed_codes_and_skips_into_finished_shards(tmp_path, processes):
    depth = np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10) ** 2
    q_pre, scale_pre = saliency_codes([torch.from_numpy(depth)], torch.device("cpu"))[0]
    with ShardSink(tmp_path, processes) as sink:
        sink.plan(_plan({0: range(0, 3), 1: range(3, 4)}))
        sink.write(
            [
                _record(0, depth=depth),
                _record(1, saliency=q_pre, scale=scale_pre),
                Record(
                    split="train",
                    shard=0,
                    key=fmt.sample_key("train", 2),
                    label=2,
                    relpath="c/2.jpg",
                    reason="too-small: 1x1",
                ),
            ]
        )
        assert sink.wait() == 3
        sink.write([_record(3, shard=1, depth=depth)])
        sink.finish()
    raws = list(fmt.iter_raw(tmp_path / fmt.shard_relpath("train", 0)))
    assert [r["__key__"] for r in raws] == [fmt.sample_key("train", i) for i in (0, 1)]
    for raw in raws:  # the child's E of the depth map == the code computed beforehand
        sample = fmt.decode(raw)
        assert sample.meta["hw"] == [8, 10] and sample.meta["sal_scale"] == scale_pre
        with Image.open(io.BytesIO(raw["sal.png"])) as png:
            np.testing.assert_array_equal(np.array(png), q_pre)
    side = fmt.finished_sidecar(
        tmp_path, "train", 0, [k for k, _ in _plan({0: range(3)})[("train", 0)]]
    )
    assert side["skipped"] == [
        {"key": fmt.sample_key("train", 2), "relpath": "c/2.jpg", "reason": "too-small: 1x1"}
    ]
    assert (tmp_path / fmt.shard_relpath("train", 1)).exists()
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("processes", [1, 2])
def test_an_error_in_a_child_is_raised_in_the_parent_and_aborts_open_shards(tmp_path, processes):
    depth = np.ones((8, 10), np.float32)
    with pytest.raises(ShardFormatError, match="not planned") as info:
        with ShardSink(tmp_path, processes) as sink:
            sink.plan(_plan({0: range(0, 2), 2: range(2, 4)}))
            sink.write(
                [
                    _record(0, depth=depth),
                    _record(2, shard=2, depth=depth),
                    _record(5, shard=3, depth=depth),
                ]
            )
            sink.wait()
    assert any("shard writer process" in note for note in info.value.__notes__)
    for shard in (0, 2, 3):
        assert not (tmp_path / fmt.shard_relpath("train", shard)).exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_finish_refuses_a_shard_that_did_not_get_all_its_samples(tmp_path):
    with pytest.raises(ShardFormatError, match="did not get all their samples"):
        with ShardSink(tmp_path) as sink:
            sink.plan(_plan({0: range(0, 2)}))
            sink.write([_record(0, depth=np.ones((8, 10), np.float32))])
            sink.finish()
    assert not (tmp_path / fmt.shard_relpath("train", 0)).exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_killed_child_is_reported_not_waited_for(tmp_path):
    with pytest.raises(SinkError, match="exited with code -9"):
        with ShardSink(tmp_path) as sink:
            sink.plan(_plan({0: range(0, 2)}))
            os.kill(sink._children[0].proc.pid, signal.SIGKILL)
            sink._children[0].proc.join()
            sink.write([_record(0, depth=np.ones((8, 10), np.float32))])
            sink.wait()


def test_leaving_without_finish_aborts_the_open_shard(tmp_path):
    with ShardSink(tmp_path) as sink:
        sink.plan(_plan({0: range(0, 2)}))
        sink.write([_record(0, depth=np.ones((8, 10), np.float32))])
        assert sink.wait() == 1
    assert not (tmp_path / fmt.shard_relpath("train", 0)).exists()
    assert not list(tmp_path.rglob("*.tmp"))
