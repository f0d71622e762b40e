"""The shipped demo model, run by the NumPy runtime at its default sampling on the sample clip
(test_0000 of the synthetic set, held out: never trained on). A runtime change that breaks
generation (a graph fed wrongly, a scheduler or hint bug, a broken decoder/vocoder) fails these.

Thresholds are the values measured on this clip with seed 0 at the manifest's sampling
(DPM-Solver++(2M)-SDE 15, guidance 3, unconditional hint "same") minus the stated margins. What the
demo model does NOT do reliably is not asserted here but reported in training/DEMO.md: on this
clip, energy from the *video* correlates r = 0.38 with the true audio's, and many prompts come out
as the wrong class; it does follow a given energy curve (r = 0.975) and the φ curve does follow
the video (r = 0.58); the class checks below are the two prompts measured to come out right on
this clip."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from benchmarks import quality as Q
from benchmarks.demo_quality import CLASSES, features
from rewas_rt import energy as E
from rewas_rt.builtin import demo_engine_dir

SAMPLE = Path(__file__).parent / "fixtures" / "demo" / "sample.mp4"
MEASURED = {"phi_r": 0.583, "control_r": 0.975}
MARGIN = 0.15  # Pearson r: well above seed-to-seed wobble, far below what a broken pipeline scores (~0)


@functools.cache
def classifier():
    """The README's classifier (logistic regression on log-mel statistics), fitted on real
    synthetic audio of every class (3 clips each, made here by training.synthetic)."""
    pytest.importorskip("sklearn", reason="the class check needs scikit-learn (pip install rewas-rt[bench])")
    from benchmarks.demo_quality import fit_classifier
    from training.synthetic import SynthConfig, make_clip

    cfg = SynthConfig(duration=5.12)
    waves, labels = [], []
    for k, label in enumerate(CLASSES):
        for i in range(3):
            waves.append(E.normalize_wav(Q.fit_window(make_clip(label, [99, 0], i, cfg).audio)))
            labels.append(k)
    return fit_classifier(np.stack(waves), np.asarray(labels))


@functools.cache
def run():
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request
    from rewas_rt.video import load_video

    pipe = Pipeline(demo_engine_dir(), backend="onnxruntime-cpu", threads=1)
    opts = GenerationOptions(**pipe.dir.recommended)  # the manifest's sampling, as `rewas-rt infer` uses it
    frames = load_video(SAMPLE, 0.0).frames
    true = Q.load_wave(SAMPLE)
    curve = E.energy_target(E.normalize_wav(Q.fit_window(true)))
    phi = pipe.predict_energy([frames])[0]
    res = pipe.generate([Request("impact", 0, energy=curve), Request("hum", 0, frames=frames)], opts)
    return true, curve, phi, [r.waveforms[0] for r in res]


def test_video_energy_and_given_curve_are_followed():
    true, curve, phi, waves = run()
    for w in waves:
        assert np.all(np.isfinite(w)) and np.abs(w).max() <= 1.0 and np.sqrt(np.mean(w**2)) > 1e-3
    assert Q.pearson(curve, phi) >= MEASURED["phi_r"] - MARGIN
    r = Q.energy_correlation(curve, waves[0])["energy_correlation"]
    assert r >= MEASURED["control_r"] - MARGIN, f"energy control r {r:.3f}"


def test_prompt_sets_the_class():
    clf = classifier()
    _, _, _, waves = run()
    pred = [CLASSES[int(k)] for k in clf.predict(np.stack([features(w) for w in waves]))]
    # Measured: "impact" with the clip's curve -> impact, "hum" from the video -> hum (a broken text
    # path gives one class for both). Not asserted, a documented miss: "hum" with the impact
    # clip's curve came out "whoosh" (the curve's bursts win over the text).
    assert pred == ["impact", "hum"], pred


def test_mel_tap_sees_what_the_vocoder_gets():
    """demo_quality's before-the-vocoder scores read the log-mel Pipeline.decode_mel hands to
    Pipeline.vocode: vocoding the tapped log-mels must give exactly the generated waveforms, and
    the classifier's features of a waveform are its log-mel's."""
    from benchmarks.demo_quality import MelTap, mel_features
    from rewas_rt.pipeline import GenerationOptions, Pipeline, Request

    pipe = Pipeline(demo_engine_dir(), backend="onnxruntime-cpu", threads=1)
    tap = MelTap(pipe)
    curve = np.linspace(-8.0, -2.0, 512, dtype=np.float32)
    res = pipe.generate([Request("beep", 3, energy=curve), Request("rain", 4, energy=curve[::-1].copy())],
                        GenerationOptions(steps=2))
    assert len(tap.mels) == 2 and tap.mels[0].shape == (512, 64)
    np.testing.assert_array_equal(pipe.vocode(np.stack(tap.mels)), np.concatenate([r.waveforms for r in res]))
    wave = res[0].waveforms[0]
    np.testing.assert_array_equal(features(wave), mel_features(E.log_mel(E.normalize_wav(Q.fit_window(wave)))))
