"""Less glue per request: the normalised video segments are written straight into one buffer
(rewas_rt.video.normalized_segments), bit for bit what normalize(segments(f)) + concatenate give."""
import numpy as np
import pytest

from rewas_rt import constants as C
from rewas_rt.video import normalize, normalized_segments, segments


def clips(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (C.FRAMES, C.CROP, C.CROP, 3), dtype=np.uint8) for _ in range(n)]


def test_equals_normalize_segments_concatenate():
    frames = clips(2)
    want = np.concatenate([normalize(segments(f)) for f in frames])
    got = normalized_segments(frames)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    # Into a reused buffer, overwriting whatever it held.
    buf = np.full_like(want, np.nan)
    assert normalized_segments(frames, out=buf) is buf
    np.testing.assert_array_equal(buf, want)
    # Frames given as a non-contiguous view (e.g. a slice of a longer clip) work too.
    long = np.concatenate([frames[0], frames[0][:10]])[::-1][::-1]
    np.testing.assert_array_equal(normalized_segments([long[:C.FRAMES]])[0], want[0])


@pytest.mark.parametrize("bad", ["dtype", "shape", "out"])
def test_rejects_wrong_inputs(bad):
    frames = clips(1)
    with pytest.raises(ValueError):
        if bad == "dtype":
            normalized_segments([frames[0].astype(np.float32)])
        elif bad == "shape":
            normalized_segments([frames[0][:100]])
        else:
            normalized_segments(frames, out=np.empty((2, C.SEGMENTS, 3, C.SEGMENT_LEN, C.CROP, C.CROP), np.float32))
    with pytest.raises(ValueError):
        normalized_segments([])


def test_pipeline_reuses_its_video_buffer(tiny_engines):
    from rewas_rt.pipeline import Pipeline

    pipe = Pipeline(tiny_engines[0], backend="onnxruntime-cpu")
    a, b = clips(2, seed=1)
    one = pipe.predict_energy([a])
    buf = pipe._video_buffer
    assert pipe.predict_energy([b]) is not None and pipe._video_buffer is buf  # same size: reused
    both = pipe.predict_energy([b, a])
    assert len(pipe._video_buffer) == 2
    np.testing.assert_allclose(both[1], one[0], rtol=1e-5, atol=1e-6)  # a's curve, whatever the buffer held
    assert pipe.predict_energy([a]) is not None and len(pipe._video_buffer) == 2  # smaller batch: a view
