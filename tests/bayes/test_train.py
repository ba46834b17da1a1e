"""SVI training with the KL term, continuous BMRS pruning, and divergence handling."""

import numpy as np
import pytest
import torch

from optprune.bayes import TrainingDivergedError, attach_noise, evidence_change, train_svi
from optprune.errors import ValidationError
from optprune.nn.models import MLP
from optprune.experiments import accuracy, load_checkpoint, load_digits_split


@pytest.fixture(scope="module")
def digits():
    return load_digits_split().flat()


def test_svi_learns_digits_and_continuous_pruning_is_monotone(digits):
    torch.manual_seed(0)
    nm = attach_noise(MLP(64, [32, 32], 10), (64,))
    hist = train_svi(nm, digits.x_train, digits.y_train, epochs=12, prune_during="U8",
                     prune_start_epoch=4, noise_lr=3e-2)
    assert hist.nll[-1] < hist.nll[0] * 0.5
    assert all(np.isfinite(hist.kl))
    assert accuracy(nm, digits.x_test, digits.y_test) > 0.85
    assert all(b <= a for a, b in zip(hist.kept, hist.kept[1:]))  # pruned stay pruned
    assert hist.kept[-1] == int(nm.keep_mask().sum())
    # Every structure still in the model has dF < 0 after its last pruning step.
    assert (evidence_change(nm, "U8")[nm.keep_mask()] < 0).all()


def test_kl_term_pulls_unused_posteriors_towards_the_prior(digits):
    """With the likelihood cut off (all-zero inputs carry no information about the
    labels), SVI lowers the KL: sigma grows towards the flat prior."""
    nm = attach_noise(MLP(64, [16], 10), (64,))
    kl0 = float(nm.kl().detach())
    x = torch.zeros_like(digits.x_train[:256])
    hist = train_svi(nm, x, digits.y_train[:256], epochs=15, kl_warmup_epochs=1, noise_lr=5e-2)
    assert hist.kl[-1] < 0.5 * kl0


def test_nan_in_data_stops_with_error_and_restores_last_good_checkpoint(digits, tmp_path):
    nm = attach_noise(MLP(64, [16], 10), (64,))
    x = digits.x_train[:320].clone()
    y = digits.y_train[:320]
    # One bad sample: every epoch's permutation reaches it after some good steps.
    x[200, 5] = float("nan")
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TrainingDivergedError, match="diverged at epoch 0") as info:
        train_svi(nm, x, y, epochs=3, checkpoint_path=path, batch_size=16)
    err = info.value
    state = nm.state_dict()
    for k, v in err.checkpoint.items():
        assert torch.equal(state[k], v)
        assert torch.isfinite(v).all()
    saved = load_checkpoint(path)
    assert saved.meta == {"step": 0, "epochs_completed": 0}  # the start: no epoch completed
    assert all(torch.equal(saved.state_dict[k], v) for k, v in err.checkpoint.items())
    # a run that completes writes its final state there
    nm2 = attach_noise(MLP(64, [16], 10), (64,))
    train_svi(nm2, digits.x_train[:64], digits.y_train[:64], epochs=2, checkpoint_path=path)
    saved = load_checkpoint(path)
    assert saved.meta == {"step": 2, "epochs_completed": 2}
    assert all(torch.equal(saved.state_dict[k], v) for k, v in nm2.state_dict().items())
    with pytest.raises(ValidationError, match="folder of 'checkpoint_path'"):
        train_svi(nm2, x, y, epochs=1, checkpoint_path=tmp_path / "no" / "c.pt")


def test_exploding_learning_rate_is_caught(digits):
    nm = attach_noise(MLP(64, [16, 16], 10), (64,))
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        train_svi(nm, digits.x_train[:512], digits.y_train[:512], epochs=20, lr=1e30)
    for p in nm.parameters():
        assert torch.isfinite(p).all()


def test_bad_arguments(digits):
    nm = attach_noise(MLP(64, [8], 10), (64,))
    with pytest.raises(ValidationError, match="noise layers"):
        train_svi(MLP(64, [8], 10), digits.x_train, digits.y_train)
    with pytest.raises(ValidationError, match="input shape"):
        train_svi(nm, digits.x_train[:, :10], digits.y_train)
    with pytest.raises(ValidationError, match="labels"):
        train_svi(nm, digits.x_train, digits.y_train[:5])
    with pytest.raises(ValidationError, match="method"):
        train_svi(nm, digits.x_train, digits.y_train, prune_during="Q")
