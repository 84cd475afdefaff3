"""Dataset sources users have: path-label lists, the Kinetics CSV, class folders in ``data check``,
symlinks inside the data root, and sub-ranges past a video's end."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import error_lines
from PIL import Image

from tubelet.cli.main import main
from tubelet.config.schema import DataConfig
from tubelet.data.builder import build_dataset
from tubelet.data.datasets import FrameFolderReader, read_manifest
from tubelet.errors import ConfigError, DataError, VideoError

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


# -- path-label lists ---------------------------------------------------------------------------


def test_path_label_lists(tmp_path, videos_dir):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.mov").write_bytes((videos_dir / TINY).read_bytes())
    (root / "b y.mov").write_bytes((videos_dir / "video_0.mov").read_bytes())  # a path with a space
    lst = tmp_path / "train.txt"
    lst.write_text("a/x.mov 3\n\nb y.mov  1\n")
    samples, lmap = read_manifest(lst, root=root)
    assert lmap is None
    assert [(s.path, s.label, s.start, s.end, s.source) for s in samples] == [
        (str(root / "a" / "x.mov"), 3, None, None, f"{lst}:1"),
        (str(root / "b y.mov"), 1, None, None, f"{lst}:3"),
    ]
    # without data.root, paths are next to the list; any suffix works when the first line is 'path label'
    (root / "val.list").write_text("a/x.mov 0\n")
    assert [s.path for s in read_manifest(root / "val.list")[0]] == [str(root / "a" / "x.mov")]
    ds = build_dataset(small_cfg(kind="manifest", root=str(root), train=str(lst)), "train")
    assert len(ds) == 2 and ds.num_classes == 4 and ds[1]["video"].shape == (3, 2, 16, 16) and int(ds[1]["label"]) == 1
    # a line without an integer label names its line; data check reports it and carries on
    lst.write_text("a/x.mov 0\na/x.mov walk\n")
    with pytest.raises(DataError, match=r"train.txt:2: expected 'path label' with an integer label, got 'a/x.mov walk'"):
        read_manifest(lst, root=root)
    errors: list = []
    assert len(read_manifest(lst, root=root, row_errors=errors)[0]) == 1 and errors[0][0] == f"{lst}:2"
    # a CSV whose header is neither kind is still refused with what would be right
    (tmp_path / "bad.csv").write_text("file,class\na/x.mov,0\n")
    with pytest.raises(DataError, match=r"bad.csv: not a manifest this reads: expected a CSV header with 'path'"):
        read_manifest(tmp_path / "bad.csv", root=root)


# -- the Kinetics CSV ---------------------------------------------------------------------------


def _tiny_video(path: Path, value: int) -> None:
    from tubelet.data.synthetic import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.full((4, 16, 16, 3), value, dtype=np.uint8)
    write_video(path, frames, fps=8, lossless=path.suffix == ".mkv")


KINETICS_CSV = """label,youtube_id,time_start,time_end,split
air drumming,abc,14,24,train
abseiling,-xy,0,10,train

"playing cards",q,1,11,train
abseiling,gone,1,11,train
"""


def _kinetics_root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "k400"
    _tiny_video(root / "abc_000014_000024.mp4", 40)  # flat, the downloader's name
    _tiny_video(root / "abseiling" / "-xy_000000_000010.mkv", 80)  # a class folder, another extension
    _tiny_video(root / "playing_cards" / "q_000001_000011.mp4", 120)  # a class folder with _ for spaces
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(KINETICS_CSV)
    return root, csv_path


def test_kinetics_csv(tmp_path):
    root, csv_path = _kinetics_root(tmp_path)
    samples, lmap = read_manifest(csv_path, root=root)
    assert lmap.names == ["abseiling", "air drumming", "playing cards"]  # sorted unique names
    assert [(Path(s.path).relative_to(root).as_posix(), s.label, s.source) for s in samples] == [
        ("abc_000014_000024.mp4", 1, f"{csv_path}:2"),
        ("abseiling/-xy_000000_000010.mkv", 0, f"{csv_path}:3"),
        ("playing_cards/q_000001_000011.mp4", 2, f"{csv_path}:5"),
        ("gone_000001_000011.mp4", 0, f"{csv_path}:6"),  # missing: kept at the downloader's name
    ]
    assert all(s.start is None and s.end is None for s in samples)  # the downloaded file is the clip
    (tmp_path / "labels.txt").write_text("playing cards\nair drumming\nabseiling\n")
    assert [s.label for s in read_manifest(csv_path, root=root, label_map=tmp_path / "labels.txt")[0]] == [1, 2, 0, 2]
    cfg = small_cfg(kind="manifest", root=str(root), train=str(csv_path), max_failure_fraction=0.5)
    ds = build_dataset(cfg, "train")
    assert ds.class_names == lmap.names and ds[1]["video"].shape == (3, 2, 16, 16) and int(ds[1]["label"]) == 0
    bad = ds[3]  # the missing clip fails to load like any missing file, against the failure budget
    assert bad.path == str(root / "gone_000001_000011.mp4") and bad.reason == "file not found"


def test_kinetics_bad_rows_in_data_check(tmp_path, capsys):
    root, csv_path = _kinetics_root(tmp_path)
    csv_path.write_text(KINETICS_CSV + "abseiling,t,x,10,train\n")
    rc = main(["data", "check", str(csv_path), "--root", str(root)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert out[0] == (f"BAD {csv_path}:6: no video for this row under '{root}' (tried gone_000001_000011, "
                      f"abseiling/gone_000001_000011 with .mp4/.mkv/.webm/.avi)")
    assert out[1] == f"BAD {csv_path}:7: 'time_start' must be whole seconds (e.g. 14), got 'x'"
    assert out[-1] == "checked 5 rows: 3 ok, 2 bad (2 invalid rows, 0 unreadable files, 0 damaged files, 0 time ranges past the video's end)"


# -- tubelet data check: class folders, frame folders, images, time ranges -----------------------


def _check(capsys, *argv) -> tuple[int, list[str]]:
    rc = main(["data", "check", *map(str, argv)])
    return rc, capsys.readouterr().out.splitlines()


def test_data_check_class_folders(tmp_path, videos_dir, capsys):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "walk").mkdir()
    (root / "run" / "a.mov").write_bytes((videos_dir / TINY).read_bytes())
    (root / "walk" / "b.mp4").write_bytes((videos_dir / "corrupt_truncated.mp4").read_bytes())
    (root / "walk" / "notes.txt").write_text("not a video")  # not an entry of a video class folder
    (tmp_path / "out.mov").write_bytes((videos_dir / TINY).read_bytes())
    (root / "walk" / "c.mov").symlink_to(tmp_path / "out.mov")
    (root / "walk" / "d.mov").symlink_to(root / "walk" / "deleted.mov")
    rc, out = _check(capsys, root, "--root", root)
    assert rc == 1
    assert out[0] == (f"BAD {root / 'walk'}: '{root / 'walk' / 'c.mov'}' is a symlink to '{tmp_path / 'out.mov'}', "
                      f"outside data.root '{root}'")
    assert out[1].startswith(f"BAD {root / 'walk'}: {root / 'walk' / 'b.mp4'}: cannot open")
    assert out[2] == f"BAD {root / 'walk'}: {root / 'walk' / 'd.mov'}: file not found"  # a dangling link is not skipped
    assert out[-1] == "checked 4 rows: 1 ok, 3 bad (1 invalid rows, 2 unreadable files, 0 damaged files, 0 time ranges past the video's end)"
    # frame folders and images: the kinds build_dataset reads, through its scanning
    _frames(tmp_path / "fr" / "push" / "v1", 3)
    (tmp_path / "fr" / "push" / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "fr")]) == 1  # a folder is read as videos unless told otherwise
    assert error_lines(capsys.readouterr().err) == [f"tubelet data check: error: '{tmp_path / 'fr'}': no samples found under the "
                                               "class folders (read as class folders of videos; pass --kind frames or "
                                               "--kind images for frame folders or images)"]
    rc, out = _check(capsys, tmp_path / "fr", "--kind", "frames")
    assert rc == 1 and out == [f"BAD {tmp_path / 'fr' / 'push'}: {tmp_path / 'fr' / 'push' / 'empty'}: frame folder has no images",
                               "checked 2 rows: 1 ok, 1 bad (0 invalid rows, 1 unreadable files, 0 time ranges past the video's end)"]
    _frames(tmp_path / "img" / "cat", 2)
    (tmp_path / "img" / "cat" / "broken.jpg").write_bytes(b"not an image")
    rc, out = _check(capsys, tmp_path / "img", "--kind", "images")
    assert rc == 1 and out[0].startswith(f"BAD {tmp_path / 'img' / 'cat'}: {tmp_path / 'img' / 'cat' / 'broken.jpg'}: "
                                         "cannot read image")
    assert out[1] == "checked 3 rows: 2 ok, 1 bad (0 invalid rows, 1 unreadable files, 0 time ranges past the video's end)"


def test_data_check_reports_ranges_past_the_end(tmp_path, videos_dir, capsys):
    m = tmp_path / "m.csv"
    m.write_text(f"path,label,start,end\n{SOCCER},0,1,8\n{SOCCER},0,1.5,9\n{SOCCER},1,8.5,\n{TINY},1,0,1/8\n")
    rc, out = _check(capsys, m, "--root", videos_dir, "--fast")
    assert rc == 1
    assert out == [
        f"BAD {m}:3: {videos_dir / SOCCER}: end 9.000 s past the video's duration 8.008 s (range [1.500, 9.000) s)",
        f"BAD {m}:4: {videos_dir / SOCCER}: start 8.500 s past the video's duration 8.008 s (range [8.500, end) s)",
        "checked 4 rows: 2 ok, 2 bad (0 invalid rows, 0 unreadable files, 2 time ranges past the video's end)",
    ]  # unordered.mov lasts exactly 4 frames at 32 fps = 1/8 s: an end at 1/8 is inside


# -- labels: every one a class, named by its row ------------------------------------------------


def _rows_and_errors(path, **kw):
    errors: list = []
    samples, _ = read_manifest(path, row_errors=errors, **kw)
    return samples, [msg for _, msg in errors]


def test_labels_that_are_no_class_name_their_row(tmp_path):
    (tmp_path / "labels.txt").write_text("walk\nrun\n")
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.mov,1\n\nb.mov,2\nc.mov,-1\nd.mov,3.5\ne.mov,run\n")
    with pytest.raises(DataError) as ei:
        read_manifest(m, label_map=tmp_path / "labels.txt")
    assert str(ei.value) == f"{m}:4: label 2 is outside [0, 2) (the 2 classes of label map '{tmp_path / 'labels.txt'}')"
    samples, errors = _rows_and_errors(m, label_map=tmp_path / "labels.txt")  # data check: every bad row, by line
    assert [s.label for s in samples] == [1, 1] and errors == [
        f"{m}:4: label 2 is outside [0, 2) (the 2 classes of label map '{tmp_path / 'labels.txt'}')",
        f"{m}:5: label -1 is outside [0, 2) (the 2 classes of label map '{tmp_path / 'labels.txt'}')",
        f"{m}:6: label '3.5' is neither an integer class id nor a class name",
    ]
    # without a label map: a negative id, and an id among rows that name their classes
    m.write_text("path,label\na.mov,0\nb.mov,-3\n")
    with pytest.raises(DataError, match=rf"^{m}:3: label -3 is negative: class ids count from 0$"):
        read_manifest(m)
    m.write_text("path,label\na.mov,walk\nb.mov,0\nc.mov,run\n")
    with pytest.raises(DataError) as ei:
        read_manifest(m)
    assert str(ei.value) == (f"{m}:3: label 0 is an integer id but other rows name their classes ('walk' at {m}:2), "
                             "whose ids come from the sorted names: write every label the same way, or give a label map")


def test_jsonl_and_path_list_labels(tmp_path):
    m = tmp_path / "m.jsonl"
    rows = [{"path": "a.mov", "label": 1}, {"path": "b.mov", "label": 2.0}, {"path": "c.mov", "label": True},
            {"path": "d.mov", "label": [1]}, {"path": "e.mov", "label": -2}, {"path": "f.mov", "label": "7"}]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples, errors = _rows_and_errors(m)
    assert [(s.label, s.source) for s in samples] == [(1, f"{m}:1"), (7, f"{m}:6")]
    assert errors == [
        f"{m}:2: label 2.0 is neither an integer class id nor a class name",
        f"{m}:3: label true is neither an integer class id nor a class name",
        f"{m}:4: label [1] is neither an integer class id nor a class name",
        f"{m}:5: label -2 is negative: class ids count from 0",
    ]
    lst = tmp_path / "train.txt"
    lst.write_text("a.mov 1\nb c.mov -1\nd.mov +2\n")
    samples, errors = _rows_and_errors(lst)
    assert [(s.label, s.source) for s in samples] == [(1, f"{lst}:1"), (2, f"{lst}:3")]
    assert errors == [f"{lst}:2: label -1 is negative: class ids count from 0"]
    # a label map's ids are integers too: int(1.7) would have made it class 1
    (tmp_path / "l.json").write_text(json.dumps({"walk": 0, "run": 1.7}))
    with pytest.raises(DataError, match=r"^label map '.*l.json': the id of 'run' must be an integer, got 1.7$"):
        read_manifest(lst, label_map=tmp_path / "l.json")


def test_data_check_reports_labels_outside_the_classes(tmp_path, videos_dir, capsys):
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\n{TINY},0\n{TINY},5\n{TINY},-1\n{TINY},2\n")
    rc, out = _check(capsys, m, "--root", videos_dir, "--fast", "--num-classes", 3)
    assert rc == 1 and out == [
        f"BAD {m}:3: label 5 is outside [0, 3) (--num-classes 3)",
        f"BAD {m}:4: label -1 is negative: class ids count from 0",
        "checked 4 rows: 2 ok, 2 bad (2 invalid rows, 0 unreadable files, 0 time ranges past the video's end)",
    ]
    rc, out = _check(capsys, m, "--root", videos_dir, "--fast")  # no class count: only the negative one is known bad
    assert rc == 1 and out[0] == f"BAD {m}:4: label -1 is negative: class ids count from 0" and len(out) == 2


def _manifest_recipe(tmp_path, videos_dir, train_labels, val_labels, **method):
    from tubelet.config import from_dict

    for split, labels in (("train", train_labels), ("val", val_labels)):
        (tmp_path / f"{split}.csv").write_text("path,label\n" + "".join(f"{TINY},{y}\n" for y in labels))
    return from_dict({
        "model": {"name": "vit_tiny", "num_classes": 4, "num_frames": 2, "img_size": 16,
                  "overrides": {"patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}},
        "data": {"kind": "manifest", "root": str(videos_dir), "train": str(tmp_path / "train.csv"),
                 "val": str(tmp_path / "val.csv"), "num_frames": 2, "sampling_rate": 1, "crop_size": 16,
                 "test_short_side": 16, "batch_size": 2, "augment": {"short_side": [16, 20]}},
        "method": method or {"name": "supervised"},
        "trainer": {"max_steps": 1, "accelerator": "cpu", "enable_progress_bar": False},
        "run_dir": str(tmp_path / "run"),
    })


def test_training_refuses_labels_outside_the_model_before_any_step(tmp_path, videos_dir):
    from tubelet.engine.fit import fit

    recipe = _manifest_recipe(tmp_path, videos_dir, [0, 1, 3, 5, 2, 7], [0, 1])
    with pytest.raises(DataError) as ei:
        fit(recipe)
    assert str(ei.value) == (f"{tmp_path / 'train.csv'}:5: label 5 is outside [0, 4) (model.num_classes=4) "
                             "(2 of 6 samples have such labels)")
    recipe = _manifest_recipe(tmp_path, videos_dir, [0, 1, 2, 3], [0, 4])  # the val split too
    with pytest.raises(DataError) as ei:
        fit(recipe)
    assert str(ei.value) == f"{tmp_path / 'val.csv'}:3: label 4 is outside [0, 4) (model.num_classes=4)"
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing ran
    # class names: each split's sorted names give its ids, so both splits must name the same classes
    recipe = _manifest_recipe(tmp_path, videos_dir, ["a", "b", "c", "d"], ["a", "b", "c", "e"])
    with pytest.raises(ConfigError) as ei:
        fit(recipe)
    assert str(ei.value) == ("the validation set's class 3 is 'e' but the training set's is 'd': set data.label_map "
                             "so that both splits share one label map")
    recipe = _manifest_recipe(tmp_path, videos_dir, ["a", "b", "c", "d"], ["a", "b", "c", "d", "e"])
    with pytest.raises(ConfigError, match=r"^model.num_classes=4 but the validation set has 5 classes$"):
        fit(recipe)
    # a method that does not train on labels keeps them as they are
    from tubelet.config.registry import method_config_class

    assert not method_config_class("mae_st").TRAINS_ON_LABELS and method_config_class("linear_probe").TRAINS_ON_LABELS


def test_testing_refuses_labels_outside_the_model(tmp_path, videos_dir):
    from tubelet.data.builder import build_dataset
    from tubelet.engine.evaluate import evaluate
    from tubelet.methods import build_method

    recipe = _manifest_recipe(tmp_path, videos_dir, [0, 1], [0, 9])
    with pytest.raises(DataError, match=rf"^{tmp_path / 'val.csv'}:3: label 9 is outside \[0, 4\) \(model.num_classes=4\)$"):
        evaluate(recipe, None, method=build_method(recipe), dataset=build_dataset(recipe.data, "val"))


def test_the_knn_monitor_refuses_labels_outside_its_classes(tmp_path, videos_dir):
    from tubelet.eval.knn import monitor_from_recipe

    recipe = _manifest_recipe(tmp_path, videos_dir, [0, 1], [0, 6], name="contrastive", knn_every_n_steps=0)
    with pytest.raises(DataError) as ei:
        monitor_from_recipe(recipe)
    assert str(ei.value) == (f"{tmp_path / 'val.csv'}:3: label 6 is outside [0, 4) (model.num_classes=4, the kNN "
                             "monitor's classes)")
