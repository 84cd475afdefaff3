"""``tubelet probe`` and ``tubelet data check`` on the real clips."""

import json

from tubelet.cli.main import main


def _probe(capsys, *paths):
    rc = main(["probe", *map(str, paths)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    return rc, lines


def test_probe_good_files(capsys, videos_dir):
    rc, recs = _probe(
        capsys, videos_dir / "video_90.mov", videos_dir / "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi"
    )
    assert rc == 0
    a, b = recs
    assert a["ok"] and a["rotation"] == 90 and (a["width"], a["height"]) == (320, 568) and a["frames"] == 3
    assert b["ok"] and b["frames"] == 83 and b["fps"] == 30.0 and b["codec"] == "mpeg4" and b["error"] is None
    assert set(a) == {"path", "ok", "frames", "fps", "duration", "width", "height", "rotation", "codec", "error",
                      "damaged", "damaged_frames", "damage"}
    assert (a["damaged"], a["damaged_frames"], a["damage"]) == (0, [], None)


def test_probe_bad_files(capsys, videos_dir, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    rc, recs = _probe(capsys, videos_dir / "corrupted.mp4", videos_dir / "corrupt_truncated.mp4", videos_dir / "unordered.mov",
                      text, tmp_path / "missing.mp4")  # fmt: skip
    assert rc == 1  # any bad file -> exit 1, every file still reported
    ok = {r["path"].rsplit("/", 1)[-1]: r for r in recs}
    assert len(recs) == 5 and ok["unordered.mov"]["ok"]
    for name in ["corrupted.mp4", "corrupt_truncated.mp4", "notes.txt", "missing.mp4"]:
        assert ok[name]["ok"] is False and ok[name]["error"]
    assert "corrupt" in ok["corrupted.mp4"]["error"]
    assert "not found" in ok["missing.mp4"]["error"]


def test_probe_fast_skips_full_decode(capsys, videos_dir):
    rc, recs = _probe(capsys, "--fast", videos_dir / "corrupted.mp4")
    assert rc == 0 and recs[0]["ok"] and recs[0]["frames"] == 50  # the index alone cannot see the corruption
    assert recs[0]["damaged"] is None  # nor concealed damage: not looked for


def test_data_check_reports_every_bad_row(capsys, videos_dir, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\nunordered.mov,0\ncorrupted.mp4,1\n../../x.mp4,0\n,1\nmissing.mp4,0\nvideo_0.mov,1\n")
    rc = main(["data", "check", str(m), "--root", str(videos_dir)])
    out = capsys.readouterr().out
    assert rc == 1
    bad = [x for x in out.splitlines() if x.startswith("BAD")]
    assert len(bad) == 4
    assert any("m.csv:3" in x and "corrupted.mp4" in x for x in bad)
    assert any("m.csv:4" in x and "escapes" in x for x in bad)
    assert any("m.csv:5" in x and "missing 'path'" in x for x in bad)
    assert any("m.csv:6" in x and "not found" in x for x in bad)
    assert "checked 6 rows: 2 ok, 4 bad" in out
