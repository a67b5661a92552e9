from __future__ import annotations

import numpy as np

from engines.preprocess import Preprocessing, audio_features, log_mel, mel_filterbank, video_features

P = Preprocessing()


def test_tone_peaks_in_the_mel_band_of_its_frequency():
    t = np.arange(16000) / 16000
    fb = mel_filterbank(P.sample_rate, P.n_fft, P.n_mels)
    centres = np.fft.rfftfreq(P.n_fft, 1 / P.sample_rate)[fb.argmax(axis=1)]
    for freq in (300.0, 1000.0, 3000.0):
        spec = log_mel(np.sin(2 * np.pi * freq * t).astype(np.float32), P)
        band = int(spec.mean(axis=1).argmax())
        assert abs(centres[band] - freq) < 0.2 * freq


def test_log_mel_frames_are_the_stft_of_each_hop():
    """Frame i is the Hann-windowed n_fft samples from i * hop, scaled as Whisper scales."""
    rng = np.random.default_rng(1)
    fb = mel_filterbank(P.sample_rate, P.n_fft, P.n_mels)
    hann = np.hanning(P.n_fft + 1)[:-1]
    for n in (P.n_fft, P.n_fft + P.hop - 1, 32000, 16000 * 3 + 77):
        audio = rng.standard_normal(n).astype(np.float32) * 0.1
        starts = range(0, n - P.n_fft + 1, P.hop)
        power = np.stack([np.abs(np.fft.rfft(audio[i:i + P.n_fft] * hann)) ** 2 for i in starts])
        expected = np.log10(np.maximum(fb @ power.T, 1e-10))
        expected = (np.maximum(expected, expected.max() - 8.0) + 4.0) / 4.0
        got = log_mel(audio, P)
        assert got.shape == (P.n_mels, len(starts)) == (P.n_mels, 1 + (n - P.n_fft) // P.hop)
        assert np.abs(got - expected).max() < 1e-4
    assert log_mel(np.ones(10, np.float32), P).shape == (P.n_mels, 1)  # shorter than a frame: padded


def test_louder_audio_gives_larger_features():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(8000).astype(np.float32) * 0.01
    assert log_mel(noise * 10, P).mean() > log_mel(noise, P).mean() + 0.3


def test_audio_features_pad_and_mask():
    mel, mask = audio_features(np.zeros(16000, np.float32) + 0.01, P)
    assert mel.shape == (P.n_mels, P.audio_frames) and mask.shape == (P.audio_tokens,)
    assert mask.sum() == np.ceil(98 / P.audio_patch)  # 1 s = 98 frames of 10 ms
    mel, mask = audio_features(None, P)
    assert mask.sum() == 0 and not mel.any()
    _, mask = audio_features(np.ones(16000 * 20, np.float32), P)  # longer than max_audio_s
    assert mask.all()


def test_video_features_take_the_nearest_frame_and_mark_missing_faces():
    face = np.full((P.face_size, P.face_size), 255, np.uint8)
    crops = [(0.0, face), (1.0, None)]
    video, mask = video_features(crops, 0.0, 1.0, P)
    # slots before 0.5 s take the face at 0.0, later ones the faceless frame at 1.0
    assert mask.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert np.allclose(video[0], 2.0) and not video[-1].any()
    assert video_features([], 0.0, 1.0, P)[1].sum() == 0
