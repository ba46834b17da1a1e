"""The experiment kit: one home for what every experiment, benchmark and test needs.

* :mod:`.data`: the digits loader and its one split (test 0.25, stratified, pixels / 16);
* :mod:`.training`: ``fit`` (AdamW, schedules, divergence guard, progress) and ``accuracy``;
* :mod:`.checkpoint`: one model file format ``{format, spec, state_dict, meta}``;
* :mod:`.recipes`: the digits ViT recipe and its checkpoint spec;
* :mod:`.jsonio`: one JSON encoder, one non-finite policy, one atomic writer (numpy only:
  the solver side uses it without torch).

Names are imported lazily: ``optprune.experiments.jsonio`` loads no torch.
"""

from __future__ import annotations

from .._extras import lazy_getattr

_MODULES = {
    "data": ("DIGITS_SHAPE", "TEST_FRACTION", "Digits", "load_digits_split"),
    "training": ("FitHistory", "accuracy", "fit"),
    "checkpoint": ("CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint"),
    "recipes": ("DIGITS_VIT", "VIT_EPOCHS", "VIT_LR", "DigitsViT", "digits_vit", "load_vit",
                "pretrained_digits_vit", "save_vit", "vit_from_spec", "vit_spec"),
    "jsonio": ("dumps", "json_default", "to_jsonable", "write_json_atomic"),
}
_LAZY = {name: mod for mod, names in _MODULES.items() for name in names}

__all__ = sorted(_LAZY)  # noqa: PLE0605 (built from the lazy table)

__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return list(__all__)
