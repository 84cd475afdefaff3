"""Log-mel spectrograms in torch ops, and the audio-pathway input of audio-visual SlowFast.

AVSlowFast (Xiao et al., arXiv 2001.08740, Sec. 3.1) feeds its audio pathway a log-mel spectrogram of
the clip's sound: 16 kHz audio, a short-time Fourier transform with a Hann window, 80 mel bands. The
pathway takes it as a one-channel "video" ``(1, T_audio, 1, F)`` (time, a unit height, frequency as
width), which is how PyTorchVideo's ``create_audio_visual_slowfast`` expects audio.

Mel scale: HTK (``mel = 2595 log10(1 + f / 700)``), triangular filters between adjacent band centres,
unnormalised (heights 1), on the power spectrum ``|STFT|^2``; ``log(mel + eps)``.
"""

from __future__ import annotations

import torch

__all__ = ["mel_filterbank", "log_mel_spectrogram", "audio_pathway_input"]


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """``(n_freqs, n_mels)`` triangular filters on the ``n_freqs = n_fft // 2 + 1`` STFT bins."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(float(_hz_to_mel(torch.tensor(f_min))), float(_hz_to_mel(torch.tensor(f_max))),
                          n_mels + 2, dtype=torch.float64)
    pts = _mel_to_hz(mels)  # band edges and centres in Hz
    lower, centre, upper = pts[:-2], pts[1:-1], pts[2:]
    up = (freqs[:, None] - lower[None]) / (centre - lower)[None]
    down = (upper[None] - freqs[:, None]) / (upper - centre)[None]
    return torch.clamp(torch.minimum(up, down), min=0.0)


def log_mel_spectrogram(
    wave: torch.Tensor,
    sample_rate: int = 16000,
    n_fft: int = 512,
    hop_length: int = 160,
    n_mels: int = 80,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``(..., samples) -> (..., frames, n_mels)`` with ``frames = 1 + samples // hop_length``
    (centred frames, reflect padding); defaults: 32 ms windows every 10 ms at 16 kHz."""
    if wave.shape[-1] <= n_fft // 2:
        raise ValueError(f"audio of {wave.shape[-1]} samples is too short for n_fft={n_fft} (needs > {n_fft // 2})")
    lead = wave.shape[:-1]
    x = wave.reshape(-1, wave.shape[-1])
    x = x if x.is_floating_point() else x.float()  # float64 stays float64 (reference checks)
    spec = torch.stft(x, n_fft, hop_length=hop_length, window=torch.hann_window(n_fft, device=x.device, dtype=x.dtype),
                      center=True, pad_mode="reflect", return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (N, n_freqs, frames)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate).to(x.device, power.dtype)
    mel = torch.einsum("nft,fm->ntm", power, fb)
    return torch.log(mel + eps).reshape(*lead, mel.shape[1], n_mels)


def audio_pathway_input(log_mel: torch.Tensor) -> torch.Tensor:
    """``(..., T, F) -> (..., 1, T, 1, F)``: the one-channel clip an audio pathway convolves."""
    return log_mel.unsqueeze(-3).unsqueeze(-2)
