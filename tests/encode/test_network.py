"""Importers: torch (Linear, Conv2d as its linear map), scikit-learn and ONNX all give the
same logits as the original model; unsupported layers are all listed at once; pickles
need an explicit opt-in; .npz round trips."""

import warnings

import numpy as np
import pytest
import torch

from optprune.encode import Network, as_network, from_onnx, from_sklearn, from_torch, load_network
from optprune.errors import UnsupportedModuleError, ValidationError


def _torch_logits(m, X, shape):
    m = m.double().eval()
    with torch.no_grad():
        return m(torch.tensor(X).reshape(-1, *shape)).numpy()


def test_torch_conv_net_equals_forward():
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, stride=1, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Dropout(0.1), torch.nn.Linear(4 * 3 * 3, 16), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(16, 10)))
    net = from_torch(m.eval(), input_shape=(1, 8, 8))
    X = np.random.default_rng(0).random((20, 64))
    assert np.max(np.abs(net.forward(X) - _torch_logits(m, X, (1, 8, 8)))) < 1e-10
    assert net.hidden_sizes == [3 * 8 * 8, 4 * 3 * 3, 16]
    # the conv map is sparse: a 3x3 kernel touches at most 9 inputs per output
    assert np.max(np.count_nonzero(net.layers[0].W, axis=1)) <= 9
    with pytest.raises(ValidationError, match="input_shape"):
        from_torch(m)


def test_consecutive_linear_layers_compose():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 6), torch.nn.ReLU(),
                            torch.nn.Linear(6, 3))
    net = from_torch(m)
    X = np.random.default_rng(1).random((10, 5))
    assert len(net.layers) == 2
    assert np.max(np.abs(net.forward(X) - _torch_logits(m, X, (5,)))) < 1e-10


def test_sklearn_mlp_equals_predict():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier((20, 10), max_iter=30, random_state=0).fit(X, y)
        binary = MLPClassifier((8,), max_iter=30, random_state=0).fit(X, y % 2)
    net = from_sklearn(clf)
    assert np.array_equal(net.predict(X), clf.predict(X))
    logits = net.forward(X)
    p = np.exp(logits - logits.max(1, keepdims=True))
    assert np.max(np.abs(p / p.sum(1, keepdims=True) - clf.predict_proba(X))) < 1e-9
    nb = from_sklearn(binary)
    assert nb.output_dim == 2 and np.array_equal(nb.predict(X), binary.predict(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tanh = MLPClassifier((5,), activation="tanh", max_iter=5).fit(X, y)
    with pytest.raises(UnsupportedModuleError, match="tanh"):
        from_sklearn(tanh)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_equals_torch(tmp_path):
    pytest.importorskip("onnx")
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.ReLU(),
                            torch.nn.Linear(12, 10)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(m, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"])
    net = load_network(path)
    X = np.random.default_rng(2).random((10, 64))
    assert np.max(np.abs(net.forward(X) - _torch_logits(m, X, (1, 8, 8)))) < 1e-6  # float32 file
    import onnx

    model = onnx.load(str(path))
    node = model.graph.node[-1]
    node.op_type = "Softmax"
    with pytest.raises(UnsupportedModuleError, match="Softmax"):
        from_onnx(model)


def test_all_unsupported_layers_listed_at_once():
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.GELU(),
                            torch.nn.Linear(4, 2), torch.nn.Softmax(dim=1))
    with pytest.raises(UnsupportedModuleError) as ei:
        from_torch(m)
    msg = str(ei.value)
    assert "3 unsupported" in msg and "BatchNorm1d" in msg and "GELU" in msg and "Softmax" in msg
    with pytest.raises(UnsupportedModuleError, match="cannot be read as a chain"):
        from_torch(torch.nn.Linear(3, 2))
    with pytest.raises(UnsupportedModuleError):
        as_network(object())


def test_files_npz_roundtrip_and_pickle_opt_in(tmp_path):
    torch.manual_seed(3)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    net = from_torch(m)
    back = load_network(net.save(tmp_path / "n.npz"))
    assert back.sha256() == net.sha256()
    torch.save(m, tmp_path / "m.pt")
    with pytest.raises(ValidationError, match="allow_pickle=True"):
        load_network(tmp_path / "m.pt")
    assert load_network(tmp_path / "m.pt", allow_pickle=True).sha256() == net.sha256()
    with pytest.raises(ValidationError, match="does not exist"):
        load_network(tmp_path / "nope.npz")


def test_compress_keeps_function():
    rng = np.random.default_rng(4)
    from optprune.encode import Layer

    W0 = rng.normal(size=(6, 4))
    W0[[1, 4]] = 0.0
    W1 = rng.normal(size=(5, 6))
    W1[:, 2] = 0.0
    net = Network((Layer(W0, rng.normal(size=6), True), Layer(W1, rng.normal(size=5), True),
                   Layer(rng.normal(size=(2, 5)), np.zeros(2), False)))
    small = net.compress()
    assert small.hidden_sizes[0] == 3
    X = rng.random((50, 4))
    assert np.max(np.abs(small.forward(X) - net.forward(X))) < 1e-12


def _onnx_graph(nodes, inits, in_shape=(1, 4)):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def test_onnx_node_forms_equal_onnx_reference_evaluator():
    """MatMul + Add (bias first or second, from a Constant node), Gemm with alpha, beta and
    transB, a bias-free Gemm, Flatten, Reshape: the network's logits are the ONNX
    reference evaluator's (float64 graphs, so exact up to summation order)."""
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(5)
    W1, b1, W2, b2 = (rng.normal(size=(4, 5)), rng.normal(size=5), rng.normal(size=(5, 3)),
                      rng.normal(size=3))
    t = numpy_helper.from_array
    mm = helper.make_node
    graphs = [
        _onnx_graph([mm("MatMul", ["x", "W1"], ["a"]), mm("Add", ["a", "b1"], ["h"]),
                     mm("Relu", ["h"], ["r"]), mm("MatMul", ["r", "W2"], ["m"]),
                     mm("Constant", [], ["cb"], value=t(b2, "cbv")),
                     mm("Add", ["cb", "m"], ["y"])],
                    [t(W1, "W1"), t(b1, "b1"), t(W2, "W2")]),
        _onnx_graph([mm("Gemm", ["x", "W1", "b1"], ["a"], alpha=0.5, beta=2.0),
                     mm("Relu", ["a"], ["r"]), mm("Gemm", ["r", "W2t"], ["g"], transB=1),
                     mm("Reshape", ["g", "shp"], ["y"])],
                    [t(W1, "W1"), t(b1, "b1"), t(W2.T.copy(), "W2t"),
                     t(np.array([1, -1], dtype=np.int64), "shp")]),
        _onnx_graph([mm("Flatten", ["x"], ["f"]), mm("MatMul", ["f", "W1"], ["a"]),
                     mm("MatMul", ["a", "W2"], ["b"]), mm("Add", ["b", "b2"], ["y"])],
                    [t(W1, "W1"), t(W2, "W2"), t(b2, "b2")], in_shape=(1, 2, 2)),
        _onnx_graph([mm("Gemm", ["x", "W1", ""], ["a"]), mm("Relu", ["a"], ["y"])],
                    [t(W1, "W1")]),
    ]
    for g in graphs:
        net = from_onnx(g)
        shape = tuple(d.dim_value for d in g.graph.input[0].type.tensor_type.shape.dim)
        ref = ReferenceEvaluator(g)
        for x in rng.normal(size=(5, 4)):
            want = ref.run(None, {"x": x.reshape(shape)})[0].ravel()
            assert np.max(np.abs(net.forward(x) - want)) < 1e-12
    assert from_onnx(graphs[2]).input_shape == (2, 2)


def test_onnx_errors_name_the_node_form():
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    W = numpy_helper.from_array(np.ones((4, 3)), "W")
    b = numpy_helper.from_array(np.ones(4), "b")
    mm = helper.make_node
    cases = [
        ([mm("Relu", ["x"], ["y"])], [], "Relu without an affine node"),
        ([mm("Gemm", ["x", "W"], ["y"], transA=1, name="g0")], [W], "g0 with transA=1"),
        ([mm("Add", ["x", "b"], ["y"], name="a0")], [b], "a0 is not a bias"),
        ([mm("MatMul", ["x", "W"], ["a"]), mm("Relu", ["x"], ["y"])], [W], "not a chain"),
        ([mm("Flatten", ["x"], ["y"])], [], "no affine node"),
    ]
    for nodes, inits, match in cases:
        with pytest.raises((UnsupportedModuleError, ValidationError), match=match):
            from_onnx(_onnx_graph(nodes, inits))
