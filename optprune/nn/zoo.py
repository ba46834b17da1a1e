"""Small models of every family structure discovery covers, built offline and seeded:
Hugging Face models from small configs (random weights; transformers is the ``hf``
extra), torch's own attention and transformer layers, Conv1d, the project's models,
and all-MiniLM-L6-v2 with its real weights. Tests and ``benchmarks/bench_coverage.py``
use the same builders, so a coverage figure and a test speak of the same model.

``build(name, seed=0)`` returns ``(model in eval mode, example inputs)``: the inputs are
a tensor or a dict of keyword inputs with 2 samples (what ``optprune.prune(data=...)``
and ``discover(data=...)`` take).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..errors import check

__all__ = ["MODELS", "HF_MODELS", "build", "Conv1dNet", "TorchMHANet", "TorchEncoderNet"]


class Conv1dNet(nn.Module):
    """Conv1d -> BatchNorm1d -> ReLU -> Conv1d -> ReLU -> global average -> Linear."""

    def __init__(self, c_in: int = 3, width: int = 8, n_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.fc(h.mean(-1))


class TorchMHANet(nn.Module):
    """Token features -> nn.MultiheadAttention (self-attention, residual) -> mean -> Linear."""

    def __init__(self, d: int = 16, heads: int = 4, n_classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(6, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out((h + a).mean(1))


class TorchEncoderNet(nn.Module):
    """Token features -> nn.TransformerEncoder (2 x nn.TransformerEncoderLayer) -> Linear."""

    def __init__(self, d: int = 16, heads: int = 4, ffn: int = 24, n_classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(6, d)
        layer = nn.TransformerEncoderLayer(d, heads, ffn, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(self.inp(x)).mean(1))


def _tr():
    from .hf import _transformers

    return _transformers()


def _tokens(vocab: int, t: int = 8, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[-1, -2:] = 0  # one padded sequence: masks are exercised
    return {"input_ids": ids, "attention_mask": mask}


def _pixels(c: int, s: int, n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, c, s, s, generator=g)}


def _bert(cls: bool):
    tr = _tr()
    cfg = tr.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32, num_labels=3)
    m = (tr.BertForSequenceClassification if cls else tr.BertModel)(cfg)
    return m, _tokens(64)


def _vit(cls: bool):
    tr = _tr()
    cfg = tr.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=3)
    m = (tr.ViTForImageClassification if cls else tr.ViTModel)(cfg)
    return m, _pixels(3, 16)


def _gpt2():
    tr = _tr()
    cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=48)
    return tr.GPT2LMHeadModel(cfg), _tokens(64)


def _llama(kv_heads: int = 2):
    tr = _tr()
    cfg = tr.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=kv_heads, head_dim=4,
                         max_position_embeddings=64, tie_word_embeddings=False)
    return tr.LlamaForCausalLM(cfg), _tokens(64)


def _resnet(layer_type: str):
    tr = _tr()
    cfg = tr.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 24],
                          depths=[1, 2, 1], layer_type=layer_type, num_labels=3,
                          downsample_in_first_stage=layer_type == "basic")
    return tr.ResNetForImageClassification(cfg), _pixels(3, 32)


def _mobilenet():
    tr = _tr()
    cfg = tr.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25,
                               num_labels=3, min_depth=4)
    return tr.MobileNetV2ForImageClassification(cfg), _pixels(3, 32)


def _minilm(cls: bool):
    tr = _tr()
    from .hf import minilm_path

    path = str(minilm_path())
    if cls:
        m = tr.BertForSequenceClassification.from_pretrained(path, num_labels=2)
    else:
        m = tr.BertModel.from_pretrained(path)
    return m, _tokens(30522, t=16)


def _own(name: str):
    from .models import MLP, SmallCNN, ViT

    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        return MLP(16, [12, 10], 4), torch.randn(2, 16, generator=g)
    if name == "cnn":
        return SmallCNN(1, 8, n_blocks=2, n_classes=4), torch.randn(2, 1, 8, 8, generator=g)
    return (ViT(dim=16, heads=(2, 3), head_dim=4, ffn=(12, 10), n_classes=4),
            torch.randn(2, 1, 8, 8, generator=g))


HF_MODELS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "bert": lambda: _bert(False),
    "bert-cls": lambda: _bert(True),
    "minilm": lambda: _minilm(False),
    "minilm-cls": lambda: _minilm(True),
    "vit": lambda: _vit(False),
    "vit-cls": lambda: _vit(True),
    "gpt2": _gpt2,
    "llama-gqa": _llama,
    "llama-mha": lambda: _llama(8),
    "resnet-basic": lambda: _resnet("basic"),
    "resnet-bottleneck": lambda: _resnet("bottleneck"),
    "mobilenetv2": _mobilenet,
}

MODELS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    **HF_MODELS,
    "torch-mha": lambda: (TorchMHANet(), torch.randn(2, 5, 6)),
    "torch-encoder": lambda: (TorchEncoderNet(), torch.randn(2, 5, 6)),
    "conv1d": lambda: (Conv1dNet(), torch.randn(2, 3, 16)),
    "mlp": lambda: _own("mlp"),
    "cnn": lambda: _own("cnn"),
    "vit-own": lambda: _own("vit"),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, Any]:
    """(model in eval mode, example inputs of 2 samples) of zoo model ``name``;
    parameters drawn with ``torch.manual_seed(seed)``, BatchNorm statistics made
    non-trivial so that surgery of buffers is exercised."""
    check(name in MODELS, "The zoo model name", f"one of {sorted(MODELS)}", name)
    torch.manual_seed(seed)
    model, inputs = MODELS[name]()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None \
                    and m.running_var is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return model.eval(), inputs
