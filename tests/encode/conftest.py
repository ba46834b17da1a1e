import numpy as np
import pytest
import torch


def train_digits_mlp(hidden=(30, 30), steps=120, seed=0):
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    layers, d = [], 64
    for h in hidden:
        layers += [torch.nn.Linear(d, h), torch.nn.ReLU()]
        d = h
    layers.append(torch.nn.Linear(d, 10))
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    return net.eval(), X, y


@pytest.fixture(scope="session")
def digits_mlp():
    return train_digits_mlp()


@pytest.fixture(scope="session")
def tiny_mlp():
    return train_digits_mlp(hidden=(12, 12), steps=150, seed=1)


def _random_network(rng, sizes, sparsity=0.0):
    from optprune.encode import Layer, Network

    layers = []
    for k in range(len(sizes) - 1):
        W = rng.normal(size=(sizes[k + 1], sizes[k])) / np.sqrt(sizes[k])
        if sparsity:
            W[rng.random(W.shape) < sparsity] = 0.0
        layers.append(Layer(W, rng.normal(size=sizes[k + 1]) * 0.3, k < len(sizes) - 2))
    return Network(tuple(layers))


@pytest.fixture
def random_network():
    """A factory: random_network(rng, sizes, sparsity) -> Network (ReLU on hidden layers)."""
    return _random_network


@pytest.fixture(scope="session")
def load_benchmark():
    """A benchmarks/<name>.py script as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name):
        path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
