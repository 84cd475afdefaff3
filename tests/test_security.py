"""Untrusted inputs: checkpoints never run code on any load path, recipes are data, data paths stay
under data.root, and fuzzed videos end in VideoError or frames, nothing else."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tubelet.config.loader import load_recipe
from tubelet.errors import CheckpointError, ConfigError, DataError, VideoError

torch.set_num_threads(1)
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"


class _Evil:
    """Unpickling this calls os.system (touches a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_files(tmp_path):
    """The same payload as a torch zip checkpoint (.ckpt, .pt, .pth) and as a raw pickle (.bin)."""
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": _Evil(marker)}
    files = []
    for name in ("step=000002.ckpt", "weights.pt", "model.pth"):
        torch.save(payload, tmp_path / name)
        files.append(tmp_path / name)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(payload))
    files.append(raw)
    return marker, files


def test_malicious_pickle_refused_on_every_load_path(tmp_path, evil_files):
    from torch import nn

    from tubelet.core.ckpt_format import (
        checkpoint_weights,
        find_latest_checkpoint,
        is_complete,
        load_checkpoint,
        safe_torch_load,
    )
    from tubelet.engine.evaluate import load_method_weights
    from tubelet.models.convert import read_foreign_state_dict
    from tubelet.models.weights import load_weights, read_state_dict

    marker, files = evil_files
    loaders = {
        "safe_torch_load": safe_torch_load,
        "load_checkpoint": load_checkpoint,
        "checkpoint_weights": checkpoint_weights,
        "read_state_dict": read_state_dict,
        "load_weights": lambda p: load_weights(nn.Linear(2, 2), p),
        "read_foreign_state_dict": read_foreign_state_dict,
        "load_method_weights": lambda p: load_method_weights(nn.Linear(2, 2), p),
    }
    for path in files:
        for name, load in loaders.items():
            with pytest.raises(CheckpointError) as err:
                load(path)
            assert str(path) in str(err.value), (name, path)
        assert not is_complete(path)
    assert find_latest_checkpoint(tmp_path) is None  # never picked by --resume auto
    assert not marker.exists()


def test_malicious_checkpoint_refused_by_cli_paths(tmp_path, evil_files, capsys):
    """``tubelet fit --resume PATH``, ``tubelet convert`` and ``model.checkpoint`` refuse it with a clean error."""
    from tubelet.cli.main import main

    marker, files = evil_files
    ckpt = files[0]
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "trainer": {"max_steps": 1}}))
    assert main(["fit", "--config", str(cfg), "--resume", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err and "Traceback" not in err
    from tubelet.models.registry import create_model

    with pytest.raises(CheckpointError, match="pth"):
        create_model("vit_tiny", checkpoint=str(files[2]))
    assert not marker.exists()


def test_recipe_yaml_tags_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"trainer:\n  max_steps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(None, [f"trainer.max_steps=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def _png(path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)


def test_manifest_paths_cannot_escape_data_root(tmp_path):
    from tubelet.data.datasets import read_manifest

    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (root / "videos" / "ok.mp4").write_bytes(b"x")
    (root / "videos" / "link.mp4").symlink_to(outside)  # symlink out of the root
    (root / "videos" / "inner.mp4").symlink_to(root / "videos" / "ok.mp4")  # symlink that stays inside
    link = "is a symlink to '.*secret.mp4', outside data.root"
    for bad, why in [("../secret.mp4", "escapes data.root"), (str(outside), "escapes data.root"),
                     ("videos/link.mp4", link), ("videos/../../secret.mp4", "escapes data.root")]:
        m = tmp_path / "m.csv"
        m.write_text(f"path,label\nvideos/ok.mp4,0\n{bad},1\n")
        with pytest.raises(DataError, match=why):
            read_manifest(m, root=root)
    m.write_text("path,label\nvideos/ok.mp4,0\nvideos/inner.mp4,1\n")
    samples, _ = read_manifest(m, root=root)
    assert [Path(s.path).name for s in samples] == ["ok.mp4", "inner.mp4"]


def test_frame_folders_and_class_folders_stay_under_root(tmp_path):
    from tubelet.config.loader import from_dict
    from tubelet.data.builder import build_dataset
    from tubelet.data.datasets import FrameFolderReader

    root = tmp_path / "root"
    clip = root / "cls" / "clip0"
    clip.mkdir(parents=True)
    for i in range(4):
        _png(clip / f"{i:05d}.png")
    secret = tmp_path / "secret.png"
    _png(secret)
    assert FrameFolderReader(clip, root=root).num_frames == 4
    (clip / "00004.png").symlink_to(secret)  # one frame of the folder points out of the root
    with pytest.raises(VideoError, match="00004.png' is a symlink to '.*secret.png', outside data.root"):
        FrameFolderReader(clip, root=root)
    assert FrameFolderReader(clip).num_frames == 5  # no root configured: no restriction

    # class folders (kind frames / folders): an entry that is a symlink out of the root is refused
    other = tmp_path / "elsewhere" / "clipX"
    other.mkdir(parents=True)
    _png(other / "00000.png")
    (root / "cls" / "clip1").symlink_to(other, target_is_directory=True)
    cfg = from_dict({"data": {"kind": "frames", "root": str(root), "train": str(root), "num_frames": 2, "crop_size": 8}})
    with pytest.raises(DataError, match="clip1' is a symlink to '.*clipX', outside data.root"):
        build_dataset(cfg.data, "train")
    (root / "cls" / "clip1").unlink()
    ds = build_dataset(cfg.data, "train")
    assert len(ds) == 1
    # the remaining folder has the escaping frame: a failed sample (here over the failure budget), not a read
    with pytest.raises(DataError, match="00004.png' is a symlink to '.*secret.png', outside data.root"):
        ds[0]


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.bin")), ids=lambda p: p.name)
def test_fuzz_regressions_end_in_video_error_or_frames(path, tmp_path):
    """Inputs found by fuzz/fuzz_decoders.py: open, random access and probe never raise anything but VideoError."""
    from tubelet.cli.probe import probe_file
    from tubelet.data.decoding import open_video

    try:
        reader = open_video(path)
        n = reader.num_frames
        frames = reader.get_frames([0, n // 2, n - 1])
        assert frames.dtype == np.uint8 and frames.shape[0] == 3
        reader.close()
    except VideoError as exc:
        assert str(path) in str(exc)
    rec = probe_file(str(path))
    assert rec["ok"] or rec["error"]


def test_fuzz_regressions_exist():
    assert (REGRESSIONS / "stream_without_codec.bin").is_file()
    from tubelet.data.decoding import open_video

    with pytest.raises(VideoError, match="no decoder"):
        open_video(REGRESSIONS / "stream_without_codec.bin")
