"""A clip's audio on the frames' timeline and its log-mel spectrogram, against independent numpy/scipy code."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tubelet.data.decoding.audio import read_audio
from tubelet.data.transforms.audio import audio_pathway_input, log_mel_spectrogram
from tubelet.errors import VideoError

torch.set_num_threads(1)

VIDEOS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "videos"
KINETICS = VIDEOS / "WUzgd7C1pWA.mp4"  # h264 + AAC, 48 kHz mono, 10.9 s
pytestmark = pytest.mark.skipif(not KINETICS.exists(), reason="shared test videos not found")


def _numpy_log_mel(wave: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int, eps: float) -> np.ndarray:
    """Written from the definitions: reflect-padded centred frames, periodic Hann, |rfft|^2, HTK mel
    triangles built band by band, natural log."""
    pad = n_fft // 2
    x = np.pad(wave.astype(np.float64), pad, mode="reflect")
    frames = 1 + (len(x) - n_fft) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * win, axis=1)) ** 2  # (frames, n_fft/2+1)
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    mel_max = 2595 * np.log10(1 + (sr / 2) / 700)
    edges = 700 * (10 ** (np.linspace(0, mel_max, n_mels + 2) / 2595) - 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        for i, f in enumerate(freqs):
            if lo < f <= c:
                fb[i, m] = (f - lo) / (c - lo)
            elif c < f < hi:
                fb[i, m] = (hi - f) / (hi - c)
    return np.log(power @ fb + eps)


def _native_audio(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        chunks = [f.to_ndarray().mean(axis=0) for f in c.decode(s)]  # planar float: (channels, n)
        return np.concatenate(chunks).astype(np.float64), s.rate


def test_window_length_and_matches_independent_decode_and_resample():
    from scipy.signal import resample_poly

    a = read_audio(KINETICS, Fraction(2), Fraction(4), sample_rate=16000)
    assert a.dtype == np.float32 and a.shape == (32000,)
    native, rate = _native_audio(KINETICS)
    assert rate == 48000
    ref = resample_poly(native, 1, 3)[32000:64000]  # 48 kHz -> 16 kHz, then seconds [2, 4)
    assert np.abs(ref).max() > 1e-3  # not a silent stretch
    # FFmpeg's resampler and scipy's polyphase filter differ slightly, and AAC priming may shift the
    # track by well under a millisecond: the waveforms must still agree almost everywhere.
    corr = np.corrcoef(a, ref)[0, 1]
    assert corr > 0.98, corr
    assert np.sqrt(np.mean((a - ref) ** 2)) < 0.1 * np.sqrt(np.mean(ref**2))


def test_log_mel_shape_and_values_against_numpy():
    a = read_audio(KINETICS, 0, 2, sample_rate=16000)
    lm = log_mel_spectrogram(torch.from_numpy(a.astype(np.float64)), sample_rate=16000, n_fft=512, hop_length=160, n_mels=80)
    assert lm.shape == (1 + 32000 // 160, 80)  # 201 frames x 80 mel bands
    ref = _numpy_log_mel(a, 16000, 512, 160, 80, 1e-6)
    np.testing.assert_allclose(lm.double().numpy(), ref, atol=2e-3, rtol=1e-3)
    x = audio_pathway_input(lm.unsqueeze(0))
    assert x.shape == (1, 1, 201, 1, 80)  # (B, C=1, T, 1, F)


def test_missing_audio_is_an_error_or_explicit_zeros():
    silent = VIDEOS / "v_SoccerJuggling_g23_c01.avi"  # video only
    with pytest.raises(VideoError, match="no audio stream"):
        read_audio(silent, 0, 1)
    z = read_audio(silent, 0, Fraction(1, 2), sample_rate=8000, missing="zeros")
    assert z.shape == (4000,) and not z.any()
    with pytest.raises(ValueError, match="empty"):
        read_audio(KINETICS, 1, 1)


def test_window_past_the_end_is_zero_padded():
    a = read_audio(KINETICS, Fraction(10), Fraction(12), sample_rate=16000)
    assert a.shape == (32000,)
    assert not a[20000:].any() and np.abs(a[:12000]).max() > 0  # the track ends at 10.9 s
