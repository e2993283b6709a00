import shutil

import numpy as np
import pytest

from mirasol_edge.calib.collect import CalibrationError, collect, media_files
from mirasol_edge.demo.hooks import synthetic_media
from mirasol_edge.demo.synthetic import QUESTIONS
from mirasol_edge.runtime.components import COMPONENTS
from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
from mirasol_edge.toolkit.export import component_spec


def _collect(model, media="synthetic", clips=4, **kw):
    args = dict(max_samples=64, min_samples=4, held_out=0.25, weights_hash="test",
                questions=list(QUESTIONS.values()), synthetic=synthetic_media)
    args.update(kw)
    return collect(model, media, clips, **args)


def test_records_every_components_real_inputs(bundled_model):
    data = _collect(bundled_model)
    assert data.clips == 4 and not data.skipped
    # 3 clips fit, 1 held out; 6 one-second chunks and 6 questions per clip
    assert [len(data.fit[c]) for c in COMPONENTS[:3]] == [18, 18, 18]
    assert [len(data.held_out[c]) for c in COMPONENTS[:3]] == [6, 6, 6]
    assert len(data.fit["text_decode"]) > 18, "every greedy answer token is a decode sample"
    state = bundled_model.init_state(1)
    for c in COMPONENTS:
        assert set(data.fit[c][0]) == set(component_spec(bundled_model, c, 1, state).inputs), c
    # The encoder saw the decoded frames of the first calibration clip, not random numbers.
    first = next(chunks(media_files("synthetic", 1, synthetic_media)[0], ChunkSpec.from_config(bundled_model.cfg)))
    np.testing.assert_array_equal(data.fit["chunk_encoder"][0]["video"][0], first.frames)  # uint8, as decoded
    np.testing.assert_allclose(data.fit["chunk_encoder"][0]["mel"][0], first.mel, atol=1e-5)
    # The AR step's state is the one the stream built: position counts the chunks of each clip.
    assert [int(s["past.pos"][0]) for s in data.fit["ar_step"][:7]] == [0, 1, 2, 3, 4, 5, 0]


def test_cached_by_media_and_model(bundled_model):
    first = _collect(bundled_model)
    said = []
    again = _collect(bundled_model, progress=said.append)
    assert any("cache" in s for s in said)
    assert again.key == first.key
    np.testing.assert_array_equal(again.fit["ar_step"][5]["past.context"], first.fit["ar_step"][5]["past.context"])
    other = _collect(bundled_model, weights_hash="other model")
    assert other.key != first.key


def test_media_that_does_not_decode_is_skipped_and_counted(bundled_model, tmp_path):
    for path in synthetic_media(3):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    data = _collect(bundled_model, tmp_path, clips=10, held_out=0.34)
    assert data.clips == 3
    assert len(data.skipped) == 1 and "broken.mp4" in data.skipped[0]


def test_too_little_media_says_what_is_needed(bundled_model, tmp_path):
    with pytest.raises(CalibrationError, match="no video files"):
        _collect(bundled_model, tmp_path)
    shutil.copy(synthetic_media(1)[0], tmp_path)
    with pytest.raises(CalibrationError, match="1 of 1 clips decoded.*need at least 2"):
        _collect(bundled_model, tmp_path)
    with pytest.raises(CalibrationError, match=r"chunk_encoder got 18 samples.*min_samples = 50"):
        _collect(bundled_model, min_samples=50)
    with pytest.raises(CalibrationError, match="not a directory"):
        _collect(bundled_model, tmp_path / "nowhere")


def test_synthetic_media_without_a_generator_says_what_to_give(bundled_model):
    with pytest.raises(CalibrationError, match="'synthetic' needs a clip generator.*give a directory of clips"):
        _collect(bundled_model, synthetic=None)
