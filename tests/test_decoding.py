"""Decoding on the real clips of ../shared/data/videos (facts from SOURCES.md)."""

from fractions import Fraction

import av
import numpy as np
import pytest

from tubelet.data.decoding import PyAVReader, open_video, to_cthw, torchcodec_available
from tubelet.errors import VideoError

# "frames decoded" column of SOURCES.md
DECODED = {
    "v_SoccerJuggling_g23_c01.avi": 240,
    "WUzgd7C1pWA.mp4": 327,
    "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi": 83,
    "RATRACE_wave_f_nm_np1_fr_goo_37.avi": 72,
    "bbb_480p_vp9_opus_1second.webm": 24,
    "frames.webm": 100,
    "video_0.mov": 3,
    "video_90.mov": 3,
    "video_180.mov": 3,
    "video_270.mov": 3,
    "unordered.mov": 4,
}


def _sequential(path):
    """Independent oracle: full decode with plain PyAV, frames in the decoder's output order (which
    is display order: decoders reorder B-frames themselves), rotation not applied."""
    with av.open(str(path), metadata_errors="ignore") as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


@pytest.mark.parametrize("name", sorted(DECODED))
def test_frame_count_matches_sources(videos_dir, name):
    r = open_video(videos_dir / name)
    assert r.num_frames == DECODED[name]
    assert r.metadata.num_frames == DECODED[name]
    assert len(r.timestamps) == DECODED[name]


@pytest.mark.parametrize(
    "name",
    [
        "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
        "RATRACE_wave_f_nm_np1_fr_goo_37.avi",
        "WUzgd7C1pWA.mp4",
        "v_SoccerJuggling_g23_c01.avi",
    ],
)
def test_all_frames_equal_sequential_decode(videos_dir, name):
    # Packed-B-frame AVIs (swapped PTS, container count != decoded count) and an H.264 with
    # B-frames: every index gives the frame of the sequential decode.
    ref = _sequential(videos_dir / name)
    r = open_video(videos_dir / name)
    got = r.get_frames(np.arange(r.num_frames))
    assert got.shape == ref.shape
    assert np.array_equal(got, ref)
    # random positions (each a seek to the keyframe before), with a reused and with fresh readers
    rng = np.random.default_rng(1)
    for k in range(6):
        idx = np.sort(rng.choice(len(ref), size=4, replace=False))
        reader = r if k % 2 else open_video(videos_dir / name)
        assert np.array_equal(reader.get_frames(idx), ref[idx])


def test_metadata(videos_dir):
    m = open_video(videos_dir / "v_SoccerJuggling_g23_c01.avi").metadata
    assert (m.width, m.height, m.codec, m.rotation) == (320, 240, "mpeg4", 0)
    assert m.fps == Fraction(30000, 1001)
    assert m.duration == Fraction(8008, 1000)
    m = open_video(videos_dir / "RATRACE_wave_f_nm_np1_fr_goo_37.avi").metadata
    assert (m.width, m.height) == (560, 240)


@pytest.mark.parametrize("name,rotation,shape", [
    ("video_0.mov", 0, (320, 568, 3)), ("video_180.mov", 180, (320, 568, 3)),
    ("video_90.mov", 90, (568, 320, 3)), ("video_270.mov", 270, (568, 320, 3)),
])  # fmt: skip
def test_rotation_applied(videos_dir, name, rotation, shape):
    r = open_video(videos_dir / name)
    m = r.metadata
    assert m.rotation == rotation
    assert (m.height, m.width) == shape[:2]
    frames = r.get_frames([0, 1, 2])
    assert frames.shape == (3, *shape)
    coded = _sequential(videos_dir / name)[0]
    # Rotating back by the reported angle gives the coded frame exactly.
    assert np.array_equal(np.rot90(frames[0], k=rotation // 90), coded)


def test_rotation_180_is_not_identity(videos_dir):
    coded = _sequential(videos_dir / "video_180.mov")[0]
    got = open_video(videos_dir / "video_180.mov").get_frames([0])[0]
    assert not np.array_equal(got, coded)
    assert np.array_equal(got, coded[::-1, ::-1])


def test_unordered_timestamps_sorted(videos_dir):
    r = open_video(videos_dir / "unordered.mov")
    assert [float(t) for t in r.timestamps] == [0.0, 0.03125, 0.0625, 0.09375]
    assert r.timestamps == sorted(r.timestamps)


def test_packed_avi_timestamps_monotonic(videos_dir):
    ts = open_video(videos_dir / "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi").timestamps
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert ts[0] == 0


@pytest.mark.parametrize(
    "name", ["hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi", "RATRACE_wave_f_nm_np1_fr_goo_37.avi"]
)
def test_packed_b_frames_come_in_decoder_output_order(videos_dir, name):
    # DivX packed B-frames: the decoder outputs frames in display order but stamps them with PTS
    # swapped in pairs (1, 4, 3, 6, 5, ...). Frame i must be the i-th frame the decoder outputs, not
    # the frame whose stamp sorts i-th.
    import av

    path = videos_dir / name
    with av.open(str(path), metadata_errors="ignore") as c:
        decoded = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(c.streams.video[0])]
    ref = np.stack([f for _, f in decoded])
    stamps = [p for p, _ in decoded]
    assert stamps != sorted(stamps)  # the file really has the swapped stamps
    r = open_video(path)
    assert r._index.output_order
    assert np.array_equal(r.get_frames(np.arange(r.num_frames)), ref)
    rng = np.random.default_rng(0)
    for _ in range(4):  # random access, fresh readers, any order
        idx = rng.choice(len(ref), size=5)
        assert np.array_equal(open_video(path).get_frames(idx), ref[idx])
    # Why output order is display order: consecutive frames change less in it than in stamp order.
    by_stamp = ref[np.argsort(stamps, kind="stable")]
    change = lambda x: np.abs(np.diff(x.astype(np.float32), axis=0)).mean()  # noqa: E731
    assert change(ref) < 0.8 * change(by_stamp)


_VOP = b"\x00\x00\x01\xb6"  # MPEG-4 Part 2 VOP start code


def _write_mpeg4_b_frames(path, n=40, gop=12, b_frames=2):
    """An Xvid-style MPEG-4 Part 2 stream with B-frames; frame i is a gradient shifted by 7 i."""
    yy, xx = np.mgrid[:48, :64]
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.max_b_frames = b_frames
        for i in range(n):
            img = ((xx * 3 + yy + i * 7) % 256).astype(np.uint8)
            for pk in s.encode(av.VideoFrame.from_ndarray(np.stack([img] * 3, -1), format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)


def _divx_pack(src, dst):
    """Rewrite an MPEG-4 AVI with one B-frame between anchors in DivX's packed layout: each B-frame
    rides in its anchor's packet, a not-coded P-VOP (N-VOP) fills its slot, and the stream header
    carries DivX user data ending in "p", which is what tells FFmpeg's decoder to unpack."""
    with av.open(str(src)) as c:
        pk = [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]
    vtype = lambda b: "IPBS"[b[b.find(_VOP) + 4] >> 6]  # noqa: E731
    j = pk[0].find(_VOP)
    header = pk[0][:j] + b"\x00\x00\x01\xb2DivX503b1393p"
    pk[0] = header + pk[0][j:]

    def n_vop(vop):  # P type, the anchor's time (modulo_time_base, 5-bit increment at 25 fps), not coded
        h = "".join(f"{x:08b}" for x in vop[4:12])
        i = 2
        while h[i] == "1":
            i += 1
        bits = "01" + h[2 : i + 1 + 1 + 5 + 1] + "0"
        bits += "0" + "1" * ((8 - (len(bits) + 1) % 8) % 8)  # MPEG-4 stuffing to the byte boundary
        return _VOP + int(bits, 2).to_bytes(len(bits) // 8, "big")

    chunks, i = [], 0
    while i < len(pk):
        if i + 1 < len(pk) and vtype(pk[i + 1]) == "B":
            chunks += [(pk[i] + pk[i + 1], vtype(pk[i]) == "I"), (n_vop(pk[i][pk[i].find(_VOP) :]), False)]
            i += 2
        else:
            chunks.append((pk[i], vtype(pk[i]) == "I"))
            i += 1
    with av.open(str(dst), "w") as o:
        s = o.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.extradata = header
        for n, (data, key) in enumerate(chunks):
            p = av.Packet(data)
            p.stream, p.pts, p.dts, p.time_base, p.is_keyframe = s, n, n, Fraction(1, 25), key
            o.mux(p)


def test_packed_b_frames_with_many_keyframes_come_in_display_order(tmp_path):
    # After a seek, a keyframe's stamp does not give its place in a packed stream (the B-frame packed
    # with it is shown first), so random access must still return the frames of a full decode.
    src, packed = tmp_path / "src.avi", tmp_path / "packed.avi"
    _write_mpeg4_b_frames(src, n=40, gop=6, b_frames=1)
    _divx_pack(src, packed)
    ref = _sequential(src)  # the unpacked original, in display order
    assert np.array_equal(_sequential(packed), ref)  # FFmpeg unpacks it to the same frames
    with av.open(str(packed)) as c:
        stamps = [f.pts for f in c.decode(c.streams.video[0])]
    assert stamps != sorted(stamps)
    with av.open(str(packed)) as c:
        key_out = [i for i, f in enumerate(c.decode(c.streams.video[0])) if f.key_frame]
    r = open_video(packed)
    assert r._index.output_order and len(r._index.key_pts) >= 5 and r.num_frames == 40
    # The index's keyframe display positions are where a full decode outputs its keyframes; those
    # packed with a B-frame sit one place after their stamp's rank.
    assert r._index.key_pos.tolist() == key_out
    assert any(p != np.searchsorted(r._index.pts, k) for p, k in zip(key_out, r._index.key_pts))
    for i in range(40):  # every frame alone, from a fresh reader: each decode starts cold
        reader = open_video(packed)
        assert np.array_equal(reader.get_frames([i])[0], ref[i]), i
        # a seek to the keyframe shown at or before frame i, not a decode from the file start
        k = max(p for p in key_out if p <= i)
        assert reader.frames_decoded <= i - k + 2, (i, reader.frames_decoded)
    idx = np.array([39, 12, 13, 0, 25, 25])
    assert np.array_equal(open_video(packed).get_frames(idx), ref[idx])


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_mpeg4_with_ordinary_b_frames_seeks_frame_accurately(tmp_path, suffix):
    # Xvid-style MPEG-4 Part 2 with (unpacked) B-frames and a keyframe every 12 frames, written here:
    # random access from fresh readers must give the frames of a sequential decode.
    path = tmp_path / f"b_frames{suffix}"
    _write_mpeg4_b_frames(path, n=60)
    ref = _sequential(path)
    r = open_video(path)
    assert r.num_frames == len(ref) == 60 and not r._index.output_order
    assert len(r._index.key_pts) >= 5
    assert np.array_equal(r.get_frames(np.arange(60)), ref)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.choice(60, size=6)
        assert np.array_equal(open_video(path).get_frames(idx), ref[idx])


def test_unpacked_streams_keep_stamp_order(videos_dir):
    for name in ("v_SoccerJuggling_g23_c01.avi", "WUzgd7C1pWA.mp4", "unordered.mov"):
        assert not open_video(videos_dir / name)._index.output_order, name


def test_frame_accurate_seeking_frames_webm(videos_dir):
    path = videos_dir / "frames.webm"
    ref = _sequential(path)
    assert ref.shape[0] == 100
    rng = np.random.default_rng(0)
    r = open_video(path)
    for _ in range(4):
        idx = np.sort(rng.choice(100, size=5, replace=False))
        assert np.array_equal(r.get_frames(idx), ref[idx])
    # arbitrary order and repeats, fresh reader each time
    idx = np.array([99, 57, 10, 10, 0, 73])
    assert np.array_equal(open_video(path).get_frames(idx), ref[idx])
    # distinct frames really differ (the digits change), so equality above is meaningful
    assert not np.array_equal(ref[10], ref[57])


def test_get_clip_half_open_window(videos_dir):
    r = open_video(videos_dir / "frames.webm")  # 30 fps; WebM stores PTS in whole milliseconds
    frames, idx = r.get_clip(Fraction(1), Fraction(2))
    assert idx.tolist() == list(range(30, 60))
    assert frames.shape[0] == 30
    assert r.timestamps[1] == Fraction(33, 1000)  # the stored time, not 1/30
    assert r.indices_in(Fraction(33, 1000), Fraction(34, 1000)).tolist() == [1]
    assert r.indices_in(Fraction(32, 1000), Fraction(33, 1000)).tolist() == []  # end is exclusive
    assert r.indices_in(Fraction(0), Fraction(1, 60)).tolist() == [0]
    assert r.indices_in(Fraction(3), Fraction(10)).tolist() == list(range(90, 100))
    assert r.indices_in(Fraction(5), Fraction(6)).size == 0


def test_only_needed_range_is_decoded(videos_dir, monkeypatch):
    # v_SoccerJuggling has a keyframe every 12 frames: a clip near the end must not decode from 0.
    r = open_video(videos_dir / "v_SoccerJuggling_g23_c01.avi")
    seen = []
    orig = r._to_rgb
    monkeypatch.setattr(r, "_to_rgb", lambda f: seen.append(f.pts) or orig(f))
    import av.container

    count = {"n": 0}
    real_decode = av.container.InputContainer.decode

    def counting(self, *a, **k):
        for f in real_decode(self, *a, **k):
            count["n"] += 1
            yield f

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    r.get_frames([200, 204, 208])
    assert len(seen) == 3
    assert 3 <= count["n"] <= 24  # at most the frames from the keyframe before 200


def test_reader_reopens_after_fork(videos_dir):
    import os

    r = open_video(videos_dir / "unordered.mov")
    r.get_frames([0])
    c = r._container
    r._pid = os.getpid() + 1  # what a forked worker sees
    r.get_frames([1])
    assert r._container is not c


def test_to_cthw(videos_dir):
    frames = open_video(videos_dir / "unordered.mov").get_frames([0, 1, 2])
    x = to_cthw(frames)
    assert tuple(x.shape) == (3, 3, 50, 50)
    assert x.dtype.is_floating_point is False
    assert np.array_equal(x[:, 1].permute(1, 2, 0).numpy(), frames[1])


def test_corrupted_raises_video_error_naming_file(videos_dir):
    r = open_video(videos_dir / "corrupted.mp4")  # opens fine, fails mid-decode
    with pytest.raises(VideoError) as ei:
        r.get_frames(np.arange(40))
    assert ei.value.path.endswith("corrupted.mp4")
    assert "corrupted.mp4" in str(ei.value)
    assert "corrupt" in ei.value.reason


def test_truncated_cannot_open(videos_dir):
    with pytest.raises(VideoError) as ei:
        open_video(videos_dir / "corrupt_truncated.mp4")
    assert "corrupt_truncated.mp4" in str(ei.value)
    assert "cannot open" in ei.value.reason


def test_empty_missing_and_text_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    for path, reason in [(empty, "empty"), (tmp_path / "missing.mp4", "not found"), (text, "cannot open")]:
        with pytest.raises(VideoError) as ei:
            open_video(path)
        assert ei.value.path == str(path)
        assert reason in ei.value.reason


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(VideoError, match="no video stream"):
        PyAVReader(path)


def test_backends():
    with pytest.raises(ValueError):
        open_video("x.mp4", backend="opencv")
    if not torchcodec_available():
        with pytest.raises(VideoError, match="torchcodec"):
            open_video(__file__, backend="torchcodec")


@pytest.mark.skipif(not torchcodec_available(), reason="torchcodec not importable")
@pytest.mark.parametrize("name", sorted(DECODED))
def test_torchcodec_matches_pyav(videos_dir, name):
    path = videos_dir / name
    ref = open_video(path, backend="pyav")
    n = ref.num_frames
    idx = np.unique(np.linspace(0, n - 1, 7).astype(int))
    tc = open_video(path, backend="torchcodec")
    assert tc.metadata == ref.metadata
    a, b = ref.get_frames(idx), tc.get_frames(idx)
    assert a.shape == b.shape
    # torchcodec converts YUV to RGB itself; on the UCF101 clip some pixels round one level apart.
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= 1


def _fake_torchcodec(monkeypatch):
    """A stand-in for torchcodec's VideoDecoder built on plain PyAV: frames by play time, display
    rotation NOT applied. It exercises the adapter (index mapping, rotation check, pickling)."""
    import sys
    import types

    import torch

    class VideoDecoder:
        def __init__(self, path, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC"):
            assert dimension_order == "NHWC" and seek_mode == "exact"
            with av.open(str(path), metadata_errors="ignore") as c:
                s = c.streams.video[0]
                tb = float(s.time_base)
                frames = [(f.pts * tb, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
            frames.sort(key=lambda x: x[0])
            self.times = np.array([t for t, _ in frames])
            self.frames = np.stack([f for _, f in frames])

        def get_frames_played_at(self, seconds):
            idx = np.searchsorted(self.times, np.asarray(seconds), side="right") - 1
            return types.SimpleNamespace(data=torch.from_numpy(self.frames[idx]))

    mod = types.ModuleType("torchcodec.decoders")
    mod.VideoDecoder = VideoDecoder
    monkeypatch.setitem(sys.modules, "torchcodec", types.ModuleType("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", mod)


@pytest.mark.parametrize(
    "name",
    ["unordered.mov", "video_90.mov", "video_180.mov", "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi"],
)
def test_torchcodec_adapter_matches_pyav(monkeypatch, videos_dir, name):
    import pickle

    from tubelet.data import decoding

    _fake_torchcodec(monkeypatch)
    monkeypatch.setattr(decoding.torchcodec, "_TC_APPLIES_ROTATION", {})
    assert torchcodec_available()
    tc = open_video(videos_dir / name, backend="auto")
    assert isinstance(tc, decoding.TorchCodecReader)
    ref = open_video(videos_dir / name, backend="pyav")
    n = ref.num_frames
    idx = np.array(sorted({0, n // 3, n // 2, n - 1}) + [0])
    assert tc.metadata == ref.metadata
    assert np.array_equal(tc.get_frames(idx), ref.get_frames(idx))
    assert np.array_equal(pickle.loads(pickle.dumps(tc)).get_frames(idx[:2]), ref.get_frames(idx[:2]))
