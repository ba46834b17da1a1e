"""The contrastive selector, the vote, and question features."""

import numpy as np
import pytest
import torch

from optprune.errors import CheckpointError, ValidationError
from optprune.sprint.configs import HeadConfig, candidate_configs
from optprune.sprint.model import SprintTransformer, default_model
from optprune.sprint.selector import (ContrastiveSelector, info_nce_loss, majority_vote,
                                      question_features)
from optprune.sprint.task import Tokenizer, generate_questions

torch.set_num_threads(1)


def _clustered(seed=0, q=400, c=12, k=4, noise=0.1):
    """Questions in k clusters; configurations 3k'..3k'+2 answer cluster k' right."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, 10)) * 3
    lab = rng.integers(0, k, q)
    feats = centers[lab] + rng.normal(size=(q, 10))
    truth = rng.integers(0, 7, q)
    good = np.zeros((q, c), bool)
    for i in range(q):
        good[i, 3 * lab[i]: 3 * lab[i] + 3] = True
    good ^= rng.random((q, c)) < noise
    wrong = (truth[:, None] + rng.integers(1, 7, (q, c))) % 7
    answers = np.where(good, truth[:, None], wrong)
    configs = [HeadConfig(((0, j),)) for j in range(c)]
    return feats.astype(np.float32), answers, truth, configs, lab


def test_info_nce_is_minimal_when_positives_align():
    v = torch.eye(4)
    pos = torch.tensor([[True, False, False, False], [False, True, True, False]])
    aligned = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]]), dim=1)
    anti = torch.nn.functional.normalize(torch.tensor([[0, 0, 0, 1.0], [1.0, 0, 0, 1.0]]), dim=1)
    assert info_nce_loss(aligned, v, pos, 0.1) < info_nce_loss(anti, v, pos, 0.1)
    # a closed form: one positive of C, all scores equal -> log C
    u = torch.zeros(1, 4)
    assert float(info_nce_loss(u, v, pos[:1], 0.1)) == pytest.approx(np.log(4))


def test_contrastive_training_reduces_loss_and_ranks_positives_first():
    feats, answers, truth, configs, lab = _clustered()
    sel = ContrastiveSelector(configs, epochs=40, seed=0).fit(feats, answers, truth)
    assert sel.final_loss_ < 0.8 * sel.initial_loss_
    assert sel.loss_history_[-1] < sel.loss_history_[0]
    # held-out questions of the same clusters: the best-aligned configuration is a good one
    lab2 = np.random.default_rng(7).integers(0, 4, 200)
    rng = np.random.default_rng(0)  # the training clusters' centres
    centers = rng.normal(size=(4, 10)) * 3
    f2 = (centers[lab2] + np.random.default_rng(5).normal(size=(200, 10))).astype(np.float32)
    top = sel.alignment(f2).argmax(1)
    assert np.mean(top // 3 == lab2) > 0.9
    p = sel.predicted_accuracy(f2)
    good = np.zeros_like(p, bool)
    for i, k in enumerate(lab2):
        good[i, 3 * k: 3 * k + 3] = True
    assert p[good].mean() - p[~good].mean() > 0.4  # true rates: 0.9 vs 0.1
    # dissimilarity = disagreement rate of the training answers
    d = sel.dissimilarity_
    assert np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    assert d[0, 1] == pytest.approx(np.mean(answers[:, 0] != answers[:, 1]))


def test_same_seed_same_selector_and_save_load(tmp_path):
    feats, answers, truth, configs, _ = _clustered(q=200)
    a = ContrastiveSelector(configs, epochs=5, seed=3).fit(feats, answers, truth)
    b = ContrastiveSelector(configs, epochs=5, seed=3).fit(feats, answers, truth)
    assert a.loss_history_ == b.loss_history_
    path = a.save(tmp_path / "sel.pt")
    c = ContrastiveSelector.load(path)
    assert np.array_equal(c.predicted_accuracy(feats), a.predicted_accuracy(feats))
    assert c.ids == a.ids and c.loss_history_ == a.loss_history_
    assert (c.initial_loss_, c.final_loss_) == (a.initial_loss_, a.final_loss_)
    with pytest.raises(CheckpointError, match="must hold a 'sprint' model"):
        SprintTransformer.load(path)


def test_unknown_configurations_and_unfitted_selector():
    feats, answers, truth, configs, _ = _clustered(q=100)
    sel = ContrastiveSelector(configs, epochs=1)
    with pytest.raises(ValidationError, match="not fitted"):
        sel.alignment(feats)
    sel.fit(feats, answers, truth)
    assert sel.index_of(["L0H3", "blocks.0.attn:head:1"]) == [3, 1]
    with pytest.raises(ValidationError, match=r"Unknown configurations \['L7H0', 'L0H99'\]"):
        sel.index_of(["L7H0", "L0H2", "L0H99"])
    with pytest.raises(ValidationError, match="columns"):
        ContrastiveSelector(configs[:3]).fit(feats, answers, truth)
    with pytest.raises(ValidationError, match="wide"):
        sel.alignment(np.zeros((2, 3)))


def test_majority_vote():
    assert majority_vote([3, 1, 3, 2]) == 3
    assert majority_vote([-1, -1, 4]) == 4
    assert majority_vote([-1, -1]) == -1
    assert majority_vote([1, 2]) == 1  # tie: first seen
    assert majority_vote([1, 2], [0.2, 0.9]) == 2  # tie: larger summed weight


def test_question_features_come_from_the_dense_model():
    tok = Tokenizer(7)
    model = default_model(tok, heads=(2, 2), d_model=16, head_dim=8, d_ff=32)
    qs = generate_questions(30, seed=0)
    f = question_features(model, tok, qs)
    assert f.shape == (30, 32)
    with torch.no_grad():
        _, h = model(torch.tensor([tok.prompt(qs[0])]), return_hidden=True)
    assert np.allclose(f[0, 16:], h[0, -1].numpy(), atol=1e-6)
    assert len(candidate_configs(model)) == 5


def test_weighted_vote():
    from optprune.sprint.selector import weighted_vote

    # one confident voter (p = 0.95) outweighs two near-chance ones (p = 0.2 > 1/7)
    assert weighted_vote([5, 2, 2], [0.95, 0.2, 0.2], 7) == 5
    # equal confidence: plain majority
    assert weighted_vote([5, 2, 2], [0.6, 0.6, 0.6], 7) == 2
    # voters at or below chance carry no weight: fall back to the majority
    assert weighted_vote([1, 3, 3], [0.1, 0.1, 0.1], 7) == 3
    assert weighted_vote([-1, -1], [0.9, 0.9], 7) == -1
