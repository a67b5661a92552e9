"""What serve runs is what `trainer evaluate BUNDLE` scored: the face settings the bundle was
trained with, unless [model] faces = "config" says otherwise; a difference is never silent."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from engines.bundle import open_bundle, write_manifest
from engines.faces import FaceOptions
from common.settings import ConfigError
from realtime.config import load_config


def _trained_at(bundle, tmp_path, sample_fps):
    """A copy of `bundle` whose run was trained with [faces] sample_fps = `sample_fps`."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["faces"] = dict(manifest["faces"], sample_fps=sample_fps)
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "files"})
    return open_bundle(copy)


def test_the_bundles_face_settings_win_and_a_difference_is_announced(bundle, tmp_path, capsys):
    from realtime.pipeline import serving_faces

    config = load_config(None, [])
    trained = _trained_at(bundle, tmp_path, config.faces.sample_fps / 2)
    assert trained.faces == replace(FaceOptions(**json.loads((bundle / "manifest.json").read_text())["faces"]),
                                    sample_fps=config.faces.sample_fps / 2)
    assert config.model.faces == "bundle"  # the default
    assert serving_faces(config, trained) == trained.faces
    err = capsys.readouterr().err
    assert f"sample_fps = {config.faces.sample_fps}" in err and "ignored" in err
    assert f"sample_fps = {config.faces.sample_fps / 2}" in err

    mine = load_config(None, ['model.faces="config"'])
    assert serving_faces(mine, trained) == mine.faces
    err = capsys.readouterr().err
    assert "not what `trainer evaluate`" in err and "sample_fps" in err

    same = open_bundle(bundle)  # trained with these very settings: nothing to say
    assert serving_faces(config, same) == config.faces and capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match="bundle or config"):
        load_config(None, ['model.faces="both"'])


def test_the_stages_get_the_bundles_face_settings(bundle, tmp_path):
    """The faces and fusion stages run the bundle's [faces] (replay and serve sample video at
    sup.faces.sample_fps): started for real, as replay starts them."""
    from realtime.pipeline import Supervisor, private_workdir

    config = load_config(None, [])
    trained = _trained_at(bundle, tmp_path, config.faces.sample_fps / 2)
    with private_workdir() as workdir:
        sup = Supervisor(config, workdir)
        try:
            sup.start_processing(lambda: trained, "faces-test", paced=False)
            assert sup.faces == trained.faces != config.faces
            assert sup.bodies["faces"].keywords["face_options"] == trained.faces
            assert sup.bodies["fusion"].keywords["face_options"] == trained.faces
        finally:
            sup.stop()
