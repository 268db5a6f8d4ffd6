"""exporter/onnx_weights.py: graphs that share weights store them once and still compute the same."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.onnx_weights import ALIGN, share_weights


def _graph(path, w: np.ndarray, b: np.ndarray, extra: np.ndarray) -> None:
    """y = x @ w + b + extra (w, b shared between graphs; extra differs)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["h2"]),
             helper.make_node("Add", ["h2", "extra"], ["y"])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(extra, "extra")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])], inits)
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_shared_weights_are_stored_once_and_give_identical_outputs(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)  # 16 KB, shared
    b = rng.standard_normal(64).astype(np.float32)  # 256 B: below min_bytes, stays inline
    extras = [rng.standard_normal((2, 64)).astype(np.float32) * 10 ** i for i in range(1, 3)]  # 512 B each
    x = rng.standard_normal((2, 64)).astype(np.float32)
    paths = [tmp_path / f"g{i}.onnx" for i in range(2)]
    for p, e in zip(paths, extras, strict=True):
        _graph(p, w, b, e)
    before = [_run(p, x) for p in paths]

    size = share_weights(paths, tmp_path / "weights.bin", min_bytes=512)

    # w once (16384 B = 4 pages), extra 1 right after it, extra 2 at the next page
    # boundary; a second copy of w would add 4 pages
    assert w.nbytes % ALIGN == 0
    assert size == w.nbytes + ALIGN + extras[1].nbytes
    assert size == (tmp_path / "weights.bin").stat().st_size
    for p, ref in zip(paths, before, strict=True):
        model = onnx.load(str(p), load_external_data=False)
        external = {i.name for i in model.graph.initializer if i.data_location == TensorProto.EXTERNAL}
        assert external == {"w", "extra"}
        assert p.stat().st_size < 1024  # the graph file no longer carries the weights
        np.testing.assert_array_equal(_run(p, x), ref)


def test_weights_file_must_sit_next_to_the_graphs(tmp_path):
    (tmp_path / "a").mkdir()
    _graph(tmp_path / "a" / "g.onnx", np.eye(64, dtype=np.float32), np.zeros(64, np.float32),
           np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="next to the graphs"):
        share_weights([tmp_path / "a" / "g.onnx"], tmp_path / "weights.bin")


def test_graphs_staged_apart_keep_their_own_same_named_tensors(tmp_path):
    """torch's exporter writes a > 2 GB graph's tensors as files named after them, next to the graph; two buckets
    hold a same-named constant of different values. Staged in folders of their own, each keeps its own."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    b = np.zeros(64, np.float32)
    extras = [np.full((2, 64), 1.0 + i, np.float32) for i in range(2)]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    sources, before = [], []
    for i, e in enumerate(extras):
        stage = tmp_path / "staging" / f"g{i}"
        stage.mkdir(parents=True)
        _graph(stage / f"g{i}.onnx", w, b, e)
        model = onnx.load(str(stage / f"g{i}.onnx"))
        onnx.save_model(model, str(stage / f"g{i}.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=0)  # one file per tensor, named after it: "w", "b", "extra" in each stage
        assert (stage / "extra").is_file()
        sources.append(stage / f"g{i}.onnx")
        before.append(_run(stage / f"g{i}.onnx", x))
    assert not np.array_equal(before[0], before[1])
    out = tmp_path / "bundle"
    out.mkdir()
    graphs = [out / f"g{i}.onnx" for i in range(2)]
    share_weights(graphs, out / "weights.bin", min_bytes=512, sources=sources)
    for g, ref in zip(graphs, before, strict=True):
        np.testing.assert_array_equal(_run(g, x), ref)
    assert sorted(p.name for p in out.iterdir()) == ["g0.onnx", "g1.onnx", "weights.bin"]


def test_write_graph_streams_the_tensors_beside_the_graph(tmp_path):
    """A graph written without its weights (as torch's exporter does with export_params=False: parameters are
    graph inputs) gets them as initializers, the large ones in `<graph>.data` at page-aligned offsets; the graph
    computes what the inline one does, and share_weights moves them into the bundle's file from there."""
    from exporter.onnx_weights import write_graph

    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)  # 256 B: stays inline
    extra = rng.standard_normal((2, 64)).astype(np.float32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    _graph(tmp_path / "inline.onnx", w, b, extra)
    want = _run(tmp_path / "inline.onnx", x)
    bare = onnx.load(str(tmp_path / "inline.onnx"))
    del bare.graph.initializer[:]
    bare.graph.input.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
                             for n, a in (("w", w), ("b", b), ("extra", extra))])
    stage = tmp_path / "stage"
    stage.mkdir()
    size = write_graph(bare, iter([("w", w), ("b", b), ("extra", extra)]), stage / "g.onnx", min_bytes=512)

    assert w.nbytes % ALIGN == 0 and size == w.nbytes + extra.nbytes  # w (4 pages), then extra on the next page
    model = onnx.load(str(stage / "g.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["x"]
    ext = {i.name: {e.key: e.value for e in i.external_data} for i in model.graph.initializer
           if i.data_location == TensorProto.EXTERNAL}
    assert ext == {"w": {"location": "g.onnx.data", "offset": "0", "length": str(w.nbytes)},
                   "extra": {"location": "g.onnx.data", "offset": str(w.nbytes), "length": str(extra.nbytes)}}
    np.testing.assert_array_equal(_run(stage / "g.onnx", x), want)
    out = tmp_path / "bundle"
    out.mkdir()
    share_weights([out / "g.onnx"], out / "weights.bin", min_bytes=512, sources=[stage / "g.onnx"])
    np.testing.assert_array_equal(_run(out / "g.onnx", x), want)
    assert sorted(p.name for p in out.iterdir()) == ["g.onnx", "weights.bin"]


def test_share_weights_refuses_to_overwrite_what_it_reads(tmp_path):
    _graph(tmp_path / "g.onnx", np.eye(64, dtype=np.float32), np.zeros(64, np.float32), np.zeros((2, 64), np.float32))
    model = onnx.load(str(tmp_path / "g.onnx"))
    onnx.save_model(model, str(tmp_path / "g.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    with pytest.raises(ValueError, match="would overwrite"):
        share_weights([tmp_path / "g.onnx"], tmp_path / "weights.bin")


def test_external_tensors_of_constant_nodes_move_too(tmp_path):
    """ONNX tools (onnxruntime's quantizer) may write a Constant node's tensor as external data: it moves into
    the bundle's weights file like the initializers, so nothing still points into the staging folder."""
    rng = np.random.default_rng(3)
    c = rng.standard_normal((2, 64)).astype(np.float32)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c, "c")),
             helper.make_node("Add", ["x", "c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])])
    stage = tmp_path / "stage"
    stage.mkdir()
    onnx.save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(stage / "g.onnx"),
                    save_as_external_data=True, location="g.onnx.data", size_threshold=0, convert_attribute=True)
    model = onnx.load(str(stage / "g.onnx"), load_external_data=False)
    assert model.graph.node[0].attribute[0].t.data_location == TensorProto.EXTERNAL  # the case under test
    out = tmp_path / "bundle"
    out.mkdir()
    share_weights([out / "g.onnx"], out / "weights.bin", min_bytes=256, sources=[stage / "g.onnx"])
    import shutil

    shutil.rmtree(stage)
    np.testing.assert_array_equal(_run(out / "g.onnx", x), x + c)
    t = onnx.load(str(out / "g.onnx"), load_external_data=False).graph.node[0].attribute[0].t
    assert {e.key: e.value for e in t.external_data}["location"] == "weights.bin"
