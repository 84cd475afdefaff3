"""Damage that FFmpeg conceals: seen in the decoded frames, reported by probe and data check, and
handled in training by data.on_damaged. The damaged files are deterministic byte-flipped copies of
the UCF101 clip, made as benchmarks/damage.py makes them (copy ``i`` of that script)."""

import importlib.util
import json
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tubelet.cli.main import main
from tubelet.config.schema import DataConfig
from tubelet.data.datasets import ClipDataset, FailureTracker
from tubelet.data.datasets.base import Sample
from tubelet.data.decoding import PyAVReader, open_video, pyav
from tubelet.data.mixing import BadSample, ClipCollate
from tubelet.errors import ConfigError, DataError

CLIP = "v_SoccerJuggling_g23_c01.avi"  # Xvid, 240 frames, one keyframe every 12 frames or so
_spec = importlib.util.spec_from_file_location("damage_bench", Path(__file__).parents[1] / "benchmarks" / "damage.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def copies(tmp_path_factory, videos_dir):
    """``make(seed) -> (path, flipped offsets)`` for copies of the UCF101 clip, and its packet table."""
    out = tmp_path_factory.mktemp("copies")
    src = videos_dir / CLIP
    data = src.read_bytes()
    packets, display, codec = bench.video_packets(src)
    made = {}

    def make(seed):
        if seed not in made:
            made[seed] = bench.make_copy(src, data, packets, seed, out)
        return made[seed]

    make.packets, make.display, make.codec = packets, display, codec
    return make


def test_concealed_frames_are_flagged(copies):
    # copy 0: four bytes flipped inside video packets; FFmpeg decodes all 240 frames without an error
    path, _ = copies(0)
    r = PyAVReader(path)
    n, _ = r.decode_all()
    assert n == 240
    d = r.damage
    assert d.flagged == (115, 187, 192, 201) and d.missing == ()
    assert d.signals == ("corrupt-frame flag", "error log") and d.n_errors == 7
    assert d.describe().startswith("frames 115, 187, 192, 201 concealed (corrupt-frame flag); errors logged: "
                                   "'P cbpy damaged at 12 7' (mpeg4)")
    # a read examines the frames it decodes: from the keyframe before the clip to its last frame
    r.get_frames(np.arange(110, 120))
    assert r.damage.flagged == (115,)
    r.get_frames(np.arange(0, 16))
    assert r.damage is None
    r.get_resized_clips([np.arange(185, 195)], lambda h, w: [pyav.ResizedCrop(0, 0, h, w, (32, 32))])
    assert r.damage.flagged == (187, 192)


def test_err_detect_bitstream_turns_silent_damage_into_flagged_frames(copies, monkeypatch):
    # copy 121: an escape-coded level out of range, which the MPEG-4 decoder only checks when asked
    path, _ = copies(121)
    r = PyAVReader(path)
    r.decode_all()
    assert r.damage.flagged == (135,)
    assert "'|level| overflow in 3. esc, qp=2' (mpeg4)" in r.damage.describe()
    monkeypatch.setattr(pyav, "ERR_DETECT", "")
    r = PyAVReader(path)
    r.decode_all()
    assert r.damage is None


def test_clean_clips_show_no_damage(videos_dir):
    # no false alarm on any real clip: a full decode and reads after seeks
    for path in sorted(videos_dir.iterdir()):
        if path.name.startswith("corrupt"):
            continue
        r = open_video(path)
        r.decode_all()
        assert r.damage is None, (path.name, r.damage)
        n = r.num_frames
        for start in np.linspace(0, max(0, n - 8), 5).astype(int):
            r.get_frames(np.arange(start, min(n, start + 8)))
            assert r.damage is None, (path.name, start, r.damage)


def test_detection_off_leaves_ffmpeg_defaults(copies):
    path, _ = copies(0)
    r = PyAVReader(path, detect_damage=False)
    r.decode_all()
    assert r.damage is None and not r.detects_damage


def test_probe_reports_damaged_frames_and_signal(capsys, copies, videos_dir):
    path, _ = copies(0)
    rc = main(["probe", str(path), str(videos_dir / "video_0.mov")])
    damaged, clean = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 1  # a damaged file is a bad file
    assert damaged["ok"] and damaged["frames"] == 240 and damaged["damaged"] == 4
    assert damaged["damaged_frames"] == [115, 187, 192, 201]
    assert damaged["damage"].startswith("frames 115, 187, 192, 201 concealed (corrupt-frame flag)")
    assert clean["ok"] and clean["damaged"] == 0 and clean["damaged_frames"] == [] and clean["damage"] is None


def test_data_check_reports_each_differing_copy_or_why_not(capsys, copies, videos_dir, tmp_path):
    # copies 0, 2 (concealed, flagged) and 14 (a coefficient flip: valid syntax, only the picture changes)
    folder = tmp_path / "root" / "copies"
    folder.mkdir(parents=True)
    ref = bench.frame_digests(videos_dir / CLIP)
    names = {}
    for seed in (0, 2, 14):
        path, offsets = copies(seed)
        (folder / path.name).write_bytes(path.read_bytes())
        names[seed] = (folder / path.name, offsets)
        assert bench.frame_digests(folder / path.name) != ref  # every one decodes to other frames
    rc = main(["data", "check", str(folder.parent)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    bad = [x for x in out if x.startswith("BAD")]
    assert len(bad) == 2
    assert any(f" {names[0][0]}: damaged: frames 115, 187, 192, 201 concealed" in x for x in bad)
    assert any(f" {names[2][0]}: damaged: frames 85, 183, 216 concealed" in x for x in bad)
    assert out[-1] == ("checked 3 rows: 1 ok, 2 bad (0 invalid rows, 0 unreadable files, 2 damaged files, "
                       "0 time ranges past the video's end)")
    # the one it misses: why it cannot be seen, from where the flip landed
    why = bench.miss_reason(names[14][1], copies.packets, copies.display, copies.codec)
    assert why.startswith("flip in the packet of frame 66: MPEG-4 Part 2 carries no checksum")
    got = bench.frame_digests(names[14][0])
    assert min(i for i, (a, b) in enumerate(zip(got, ref)) if a != b) == 66  # the picture changes from there


# -- training: data.on_damaged ------------------------------------------------------------------
def _dataset(path, policy, split="val", **kw):
    # 16 x 16 at 30 fps spans 8.5 s: the one validation clip covers the whole 8 s video
    cfg = DataConfig(kind="manifest", num_frames=16, sampling_rate=16, on_damaged=policy, max_failure_fraction=1.0, **kw)
    return ClipDataset([Sample(str(path), 0, source="m.csv:2")], cfg, split)


def test_on_damaged_skip_is_a_bad_file(copies):
    path, _ = copies(0)
    ds = _dataset(path, "skip")
    out = ds[0]
    assert isinstance(out, BadSample) and out.path == str(path)
    assert out.reason.startswith("damaged: frames 115, 187, 192, 201 concealed (corrupt-frame flag)")
    assert ds.failures[str(path)][2] == out.reason  # counted once against max_failure_fraction
    tracker = FailureTracker(1, 1.0)
    tracker.add(ClipCollate()([out]))
    assert tracker.failures[str(path)][2] == out.reason  # and so listed in bad_files.txt


def test_on_damaged_keep_trains_and_reports_once(copies):
    path, _ = copies(0)
    ds = _dataset(path, "keep")
    out = ds[0]
    assert out["video"].shape == (1, 3, 16, 240, 320)
    batch = ClipCollate()([out, ds[0]])
    assert batch["video"].shape[0] == 2 and "damage" not in batch
    reason = "damaged: frames 115, 187, 192, 201 concealed (corrupt-frame flag)"
    assert [(i, p) for i, p, _ in batch["damaged_samples"]] == [(0, str(path)), (0, str(path))]
    assert batch["damaged_samples"][0][2].startswith(reason)
    tracker = FailureTracker(1, 0.0)
    assert [p for _, p, _ in tracker.add_damaged(batch)] == [str(path)]
    assert tracker.add_damaged(batch) == []  # once per file
    tracker.check()  # kept files are no failures


def test_on_damaged_fail_stops_naming_the_file(copies, monkeypatch):
    from tubelet.data.datasets.base import DAMAGED_FAIL

    path, _ = copies(0)
    with pytest.raises(DataError) as err:
        _dataset(path, "fail")[0]
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: damaged: frames 115, 187, 192, 201 concealed")
    assert msg.endswith("data.on_damaged=fail stops at the first damaged file (data.on_damaged=skip leaves "
                        "such files out, keep trains on them)")
    # in a training loader worker the sample comes back bad, and the main process stops on it
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    out = _dataset(path, "fail", split="train")[0]
    assert isinstance(out, BadSample) and out.reason.startswith(DAMAGED_FAIL)
    tracker = FailureTracker(1000, 1.0)
    tracker.add(ClipCollate()([out]))
    with pytest.raises(DataError) as err:
        tracker.check()
    assert str(err.value) == msg


def test_only_the_frames_a_read_decodes_are_examined(copies):
    # a sub-range before the first damaged frame (115 at 29.97 fps is 3.84 s): the read decodes frames
    # 0-89 only, so even data.on_damaged=fail trains on it
    path, _ = copies(0)
    cfg = DataConfig(kind="manifest", num_frames=8, sampling_rate=4, on_damaged="fail")
    ds = ClipDataset([Sample(str(path), 0, start=Fraction(0), end=Fraction(3))], cfg, "val")
    assert ds[0]["video"].shape == (1, 3, 8, 240, 320)


def test_torchcodec_cannot_honour_skip_or_fail(copies, monkeypatch):
    path, _ = copies(0)
    for policy in ("skip", "fail"):
        with pytest.raises(ConfigError) as err:
            _dataset(path, policy, decoder="torchcodec")
        assert str(err.value) == (f"data.on_damaged={policy} needs data.decoder pyav (or auto): torchcodec cannot see "
                                  "damage that FFmpeg conceals; set data.decoder: pyav, or data.on_damaged: keep to "
                                  "train on torchcodec's frames unchecked")
    # auto picks PyAV when the policy needs to see damage
    assert _dataset(path, "skip", decoder="auto").opener.keywords["backend"] == "pyav"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _dataset(path, "keep", decoder="torchcodec")
    assert ds.opener.keywords["backend"] == "torchcodec"
    assert any("damaged files are trained on unreported" in str(w.message) for w in caught)


def test_on_damaged_is_checked_at_load():
    from tubelet.config.loader import load_recipe

    with pytest.raises(ConfigError, match="on_damaged"):
        load_recipe(None, ["data.on_damaged=drop"])
    assert load_recipe(None, ["data.on_damaged=keep"]).data.on_damaged == "keep"


@pytest.mark.parametrize("policy, workers", [("skip", 0), ("keep", 0), ("fail", 2)])
def test_fit_follows_on_damaged(tmp_path, videos_dir, copies, caplog, policy, workers):
    """A tiny run over 5 good rows and one damaged one (a range around its concealed frame 115) for
    several epochs: skipped and listed, trained on and reported once, or stopped on in one line."""
    from test_engine import TINY_RECIPE

    from tubelet.config import from_dict
    from tubelet.data.builder import build_dataset
    from tubelet.engine import fit

    damaged, _ = copies(0)
    good = ["WUzgd7C1pWA.mp4", "unordered.mov", "video_0.mov", "RATRACE_wave_f_nm_np1_fr_goo_37.avi", CLIP]
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label,start,end\n" + "".join(f"{videos_dir / p},{i % 2},,\n" for i, p in enumerate(good))
                        + f"{damaged},1,3.7,4.0\n")
    recipe = from_dict({
        **TINY_RECIPE, "run_dir": str(tmp_path / "run"),
        "data": {"kind": "manifest", "train": str(manifest), "num_frames": 4, "crop_size": 16, "batch_size": 3,
                 "num_workers": workers, "max_failure_fraction": 0.5, "on_damaged": policy,
                 "augment": {"short_side": [16, 20]}},
        "model": {**TINY_RECIPE["model"], "num_classes": 2},
        "trainer": {**TINY_RECIPE["trainer"], "max_steps": 6, "val_check_interval": None},
    })
    datasets = {"train": build_dataset(recipe.data, "train", seed=recipe.seed)}
    if policy == "fail":
        from tubelet.data.datasets.base import damaged_fail_message

        with pytest.raises(DataError) as err:
            fit(recipe, datasets=datasets)
        assert str(err.value).startswith(f"{damaged}: damaged: frame 115 concealed (corrupt-frame flag)")
        assert str(err.value) == damaged_fail_message(str(damaged), str(err.value).split(": damaged: ", 1)[1].split(
            "; data.on_damaged=fail")[0])
        assert "\n" not in str(err.value)
        return
    fit(recipe, datasets=datasets)  # 2 steps an epoch: 3 epochs, the damaged row read 3 times
    console = caplog.text
    bad = tmp_path / "run" / "bad_files.txt"
    if policy == "skip":
        assert bad.read_text().startswith(f"{damaged}\tdamaged: frame 115 concealed (corrupt-frame flag)")
        assert console.count(f"skipping unreadable file {damaged}: damaged: frame 115") == 1
    else:
        assert not bad.exists()
        assert console.count(f"training on damaged file {damaged} (data.on_damaged=keep, reported once): "
                             "damaged: frame 115 concealed (corrupt-frame flag)") == 1


def test_ffmpeg_log_settings_are_restored_and_user_logging_still_gets_its_lines(copies, videos_dir, caplog):
    import logging

    import av.logging as avlog

    path, _ = copies(0)
    assert avlog.get_level() is None and avlog.get_skip_repeated()
    PyAVReader(path).decode_all()
    assert avlog.get_level() is None and avlog.get_skip_repeated()  # PyAV's defaults, as before the read
    avlog.set_level(avlog.VERBOSE)  # a user who logs FFmpeg
    try:
        with caplog.at_level(logging.DEBUG, logger="libav"):
            r = PyAVReader(videos_dir / "WUzgd7C1pWA.mp4")
            r.get_frames([0, 1])
        assert avlog.get_level() == avlog.VERBOSE
        assert any(rec.name == "libav.h264" and "Reinit context to 352x256" in rec.getMessage() for rec in caplog.records)
    finally:
        avlog.set_level(None)
