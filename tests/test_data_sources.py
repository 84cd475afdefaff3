"""Dataset sources users have: path-label lists, the Kinetics CSV, class folders in ``data check``,
symlinks inside the data root, and sub-ranges past a video's end."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tubelet.config.schema import DataConfig
from tubelet.data.builder import build_dataset
from tubelet.data.datasets import FrameFolderReader, read_manifest
from tubelet.errors import DataError, VideoError

SOCCER = "v_SoccerJuggling_g23_c01.avi"  # 8.008 s
TINY = "unordered.mov"  # 4 frames at 32 fps: 0.125 s


def small_cfg(**kw) -> DataConfig:
    cfg = DataConfig(num_frames=2, sampling_rate=1, crop_size=16, test_short_side=16, **kw)
    cfg.augment.short_side = [16, 20]
    return cfg


def _frames(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 20 * i, dtype=np.uint8)).save(folder / f"{i:05d}.png")


# -- symlinks inside data.root ------------------------------------------------------------------


def test_symlinks_inside_root_are_followed(tmp_path, videos_dir, monkeypatch):
    root = tmp_path / "root"
    (root / "store" / "walk").mkdir(parents=True)
    (root / "store" / "walk" / "a.mov").write_bytes((videos_dir / TINY).read_bytes())  # a real file in the root
    (root / "classes").mkdir()
    (root / "classes" / "walk").symlink_to(root / "store" / "walk", target_is_directory=True)  # class folder link
    (root / "classes" / "run").mkdir()
    (root / "classes" / "run" / "b.mov").symlink_to(root / "store" / "walk" / "a.mov")  # video link
    cfg = small_cfg(kind="folders", root=str(root), train=str(root / "classes"))
    ds = build_dataset(cfg, "train")
    assert [Path(s.path).relative_to(root).as_posix() for s in ds.samples] == ["classes/run/b.mov", "classes/walk/a.mov"]
    assert ds[0]["video"].shape == ds[1]["video"].shape == (3, 2, 16, 16)
    # a manifest row through the linked class folder, and a data.root that is itself a symlink
    (tmp_path / "rootlink").symlink_to(root, target_is_directory=True)
    (tmp_path / "m.csv").write_text("path,label\nclasses/walk/a.mov,0\nclasses/run/b.mov,1\n")
    samples, _ = read_manifest(tmp_path / "m.csv", root=tmp_path / "rootlink")
    assert [s.label for s in samples] == [0, 1]
    # frame folders: a linked video folder whose frames live elsewhere in the root
    _frames(root / "frames_store" / "clip0")
    (root / "fr" / "cls").mkdir(parents=True)
    (root / "fr" / "cls" / "clip0").symlink_to(root / "frames_store" / "clip0", target_is_directory=True)
    assert FrameFolderReader(root / "fr" / "cls" / "clip0", root=root).num_frames == 3
    monkeypatch.chdir(tmp_path)  # relative data.root and data.train behave the same
    ds = build_dataset(small_cfg(kind="frames", root="root", train="root/fr"), "train")
    assert len(ds) == 1 and ds[0]["video"].shape == (3, 2, 16, 16)


def test_video_linked_out_of_root_is_named(tmp_path, videos_dir):
    root = tmp_path / "root"
    (root / "cls").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.mov").write_bytes((videos_dir / TINY).read_bytes())
    (root / "cls" / "a.mov").symlink_to(elsewhere / "a.mov")
    (tmp_path / "m.csv").write_text("path,label\ncls/a.mov,0\n")
    with pytest.raises(DataError) as ei:
        read_manifest(tmp_path / "m.csv", root=root)
    assert str(ei.value) == (f"{tmp_path / 'm.csv'}:2: '{root / 'cls' / 'a.mov'}' is a symlink to "
                             f"'{elsewhere / 'a.mov'}', outside data.root '{root}'")


def test_class_folder_linked_out_of_a_relative_root_is_refused(tmp_path, videos_dir, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.mov").write_bytes((videos_dir / TINY).read_bytes())
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "cls").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    monkeypatch.chdir(tmp_path)  # data.root and data.train relative to the working directory
    with pytest.raises(DataError, match=r"'root/cls' is a symlink to '.*elsewhere', outside data.root 'root'"):
        build_dataset(small_cfg(kind="folders", root="root", train="root"), "train")


def test_frame_linked_out_of_root_is_named(tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.chdir(tmp_path)
    _frames(root / "fr" / "c" / "v")
    (root / "fr" / "c" / "v" / "00009.png").symlink_to(tmp_path / "secret.png")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "secret.png")
    with pytest.raises(VideoError, match=r"'root/fr/c/v/00009.png' is a symlink to '.*secret.png', outside data.root"):
        FrameFolderReader("root/fr/c/v", root="root")
