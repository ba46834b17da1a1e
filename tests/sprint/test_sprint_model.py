"""The task, the transformer and its head masks."""

import numpy as np
import pytest
import torch

from optprune.errors import CheckpointError, ValidationError
from optprune.sprint.configs import HeadConfig, candidate_configs, config_costs, config_masks
from optprune.sprint.model import (SprintTransformer, answer, answer_table,
                                   batch_examples, default_model, generate, train_model)
from optprune.sprint.task import Tokenizer, generate_questions, parse_question

torch.set_num_threads(1)


def _model(heads=(3, 2, 4), seed=0):
    tok = Tokenizer(7)
    return tok, default_model(tok, heads=heads, d_model=32, head_dim=8, d_ff=48, seed=seed)


def test_task_answers_are_the_chain_and_deterministic():
    q = parse_question("3+4*2-5=")
    assert q.intermediate() == (0, 0, 2) and q.answer == 2 and q.steps == 3
    a = generate_questions(50, seed=3)
    b = generate_questions(50, seed=3)
    assert a == b
    for q in a:  # recompute left to right with Python integers
        r = q.start
        for op, d in q.ops:
            r = eval(f"({r}){op}{d}") % 7
        assert r == q.answer
    # every step is a bijection of Z_7, so answers are uniform over many questions
    ans = np.bincount([q.answer for q in generate_questions(7000, seed=1)], minlength=7)
    assert ans.min() > 850


@pytest.mark.parametrize("bad", ["", "3+", "3+9", "3*0", "x+1", "12+3"])
def test_bad_questions_are_rejected(bad):
    with pytest.raises(ValidationError, match="question|Multipliers"):
        parse_question(bad)


def test_tokenizer_answer_parsing():
    tok = Tokenizer(7)
    q = parse_question("1+2+3")
    assert tok.answer_of(tok.target(q), q.steps) == q.answer
    assert tok.answer_of(tok.target(q)[:-1] + [tok.bos], q.steps) == -1  # no <eos>
    assert tok.answer_of([tok.eq] + tok.target(q)[1:], q.steps) == -1  # not a digit


@pytest.mark.parametrize("layer,head", [(0, 0), (0, 2), (1, 1), (2, 3)])
def test_head_mask_equals_removing_the_head(layer, head):
    """Masking a head == the physically smaller model without it, on random sequences."""
    tok, model = _model()
    x = torch.randint(0, tok.vocab_size, (5, 17))
    mask = config_masks(model, [HeadConfig(((layer, head),))])[0]
    small = model.without_heads([(layer, head)])
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(model(x, mask), small(x), atol=1e-5)
        # and it differs from the dense model: the head did contribute
        assert not torch.allclose(model(x, mask), model(x), atol=1e-4)


def test_mask_equals_zeroing_output_projection_columns():
    tok, model = _model()
    x = torch.randint(0, tok.vocab_size, (4, 12))
    cfg = HeadConfig(((0, 1), (2, 0), (2, 3)))
    mask = config_masks(model, [cfg])[0]
    ref = SprintTransformer(model.spec)
    ref.load_state_dict(model.state_dict())
    dh = model.spec.head_dim
    with torch.no_grad():
        for la, h in cfg.pruned:
            ref.blocks[la].attn.out.weight[:, h * dh:(h + 1) * dh] = 0
        assert torch.allclose(model(x, mask), ref(x), atol=1e-6)


def test_whole_layer_pruned_equals_zero_head_layer():
    tok, model = _model()
    x = torch.randint(0, tok.vocab_size, (3, 9))
    cfg = HeadConfig(((1, 0), (1, 1)))
    small = model.without_heads(cfg.pruned)
    assert small.heads == (3, 0, 4)
    with torch.no_grad():
        assert torch.allclose(model(x, config_masks(model, [cfg])[0]), small(x), atol=1e-5)


def test_per_row_masks_and_cached_generation_match_full_forward():
    tok, model = _model()
    qs = generate_questions(6, seed=0, min_steps=4, max_steps=4)
    prompt = torch.tensor([tok.prompt(q) for q in qs])
    cfgs = candidate_configs(model)[:6]
    masks = config_masks(model, cfgs)
    g = generate(model, prompt, 5, masks)
    with torch.no_grad():
        full = model(torch.cat([prompt, g], 1), masks)
    # greedy: every generated token is the argmax of the full forward at its position
    t0 = prompt.shape[1]
    assert torch.equal(full[:, t0 - 1:t0 + 4].argmax(-1), g)
    # each row with its own mask equals that row run alone with its mask
    for i in range(6):
        gi = generate(model, prompt[i:i + 1], 5, masks[i])
        assert torch.equal(gi[0], g[i])
    table = answer_table(model, tok, qs, masks)
    for j in range(len(cfgs)):
        assert np.array_equal(table[:, j], answer(model, tok, qs, masks[j])[:, 0])


def test_bad_configurations_and_models_raise():
    tok, model = _model()
    with pytest.raises(ValidationError, match="does not have.*L5H0"):
        config_masks(model, [HeadConfig(((5, 0),)), HeadConfig(((0, 0),))])
    with pytest.raises(ValidationError, match="does not have"):
        config_masks(model, [HeadConfig(((1, 2),))])  # layer 1 has 2 heads
    with pytest.raises(ValidationError, match="L<layer>H<head>"):
        HeadConfig.parse("head7")
    assert HeadConfig.parse("blocks.2.attn:head:1+L0H0").id == "L0H0+L2H1"
    headless = default_model(tok, heads=(0, 0), d_model=16, head_dim=4, d_ff=16)
    with pytest.raises(ValidationError, match="at least one"):
        candidate_configs(headless)
    with pytest.raises(ValidationError, match="at least one"):
        candidate_configs(torch.nn.Linear(3, 3))
    with pytest.raises(ValidationError, match="head mask"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.ones(3, 3))


def test_costs_fall_with_pruned_heads():
    _, model = _model()
    cfgs = [HeadConfig(()), HeadConfig(((0, 0),)), HeadConfig(((0, 0), (2, 1)))]
    c = config_costs(model, cfgs)
    assert c[0] > c[1] > c[2] and c[0] - c[1] == c[1] - c[2]


def test_training_reduces_loss_deterministically():
    tok = Tokenizer(7)
    runs = []
    for _ in range(2):
        model = default_model(tok, max_steps=3, d_model=16, head_dim=4, d_ff=32, seed=0)
        runs.append(train_model(model, tok, steps=60, batch_size=32, max_steps=3, seed=0))
    assert runs[0].losses == runs[1].losses  # same seed, same run
    assert np.mean(runs[0].losses[-10:]) < 0.8 * np.mean(runs[0].losses[:5])
    x, y = batch_examples(tok, generate_questions(4, seed=0, max_steps=3))
    assert (y != -100).sum() == sum(q.steps + 1 for q in generate_questions(4, seed=0, max_steps=3))


@pytest.mark.slow
def test_experiment_recipe_trains_to_graded_accuracy():
    """The experiment's recipe (1000 of 1400 one-cycle steps, ~1-3 min on one loaded
    thread): well above chance (1/7), falling with the number of steps."""
    from optprune.sprint.experiment import ExperimentConfig, build_model

    model, tok, _ = build_model(ExperimentConfig())
    qs = generate_questions(400, seed=7)
    ok = answer(model, tok, qs)[:, 0] == np.array([q.answer for q in qs])
    steps = np.array([q.steps for q in qs])
    assert ok.mean() > 0.6
    assert ok[steps <= 3].mean() > ok[steps >= 7].mean()


def test_save_load_round_trip_of_a_pruned_model(tmp_path):
    tok, model = _model()
    small = model.without_heads([(0, 1), (2, 0), (2, 3)])
    path = small.save(tmp_path / "m.pt", steps=3)
    back = SprintTransformer.load(path)
    assert back.heads == small.heads == (2, 2, 2)
    x, _ = batch_examples(tok, generate_questions(4, seed=1))
    with torch.no_grad():
        assert torch.equal(back(x), small.eval()(x))
    with pytest.raises(CheckpointError, match="none.pt.*optprune sprint train"):
        SprintTransformer.load(tmp_path / "none.pt")
