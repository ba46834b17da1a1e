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
