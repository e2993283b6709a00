import pytest

from mirasol_edge.toolkit import MirasolConfig
from mirasol_edge.toolkit.summary import parameter_counts


def test_tiny_is_under_3m_parameters():
    assert parameter_counts(MirasolConfig.preset("tiny"))["total"] < 3_000_000


def test_edge_is_sized_for_an_orin_nano():
    assert 100e6 <= parameter_counts(MirasolConfig.preset("edge"))["total"] <= 300e6


def test_mirasol3b_has_the_papers_split():
    counts = parameter_counts(MirasolConfig.preset("mirasol3b"))
    assert abs(counts["total"] - 3.0e9) <= 0.05 * 3.0e9
    assert counts["autoregressive"] > counts["total"] / 2
    no_audio = parameter_counts(MirasolConfig.preset("mirasol3b").replace(use_audio=False))["total"]
    assert 2.8e9 <= no_audio <= 3.0e9 and no_audio < counts["total"]


def test_chunk_geometry_of_tiny():
    cfg = MirasolConfig.preset("tiny")
    assert cfg.chunk_seconds == 1.0
    assert cfg.audio_samples_per_chunk == 16000
    assert cfg.mel_frames_per_chunk == 100
    assert cfg.chunks_per_128_frames == 32


def test_config_round_trips_and_hash_is_stable():
    cfg = MirasolConfig.preset("edge")
    again = MirasolConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.hash() == cfg.hash()
    assert cfg.replace(window_chunks=4).hash() != cfg.hash()


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        MirasolConfig.preset("huge")


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(frames_per_chunk=5), "frames_per_chunk"),
        (dict(image_size=30), "image_size"),
        (dict(combiner="lstm"), "combiner"),
        (dict(ar_width=130), "ar_width"),
        (dict(hop_length=333), "hop_length"),
    ],
)
def test_bad_config_names_the_key(change, key):
    with pytest.raises(ValueError, match=f"MirasolConfig.{key}"):
        MirasolConfig.preset("tiny").replace(**change)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="unknown config keys: colour"):
        MirasolConfig.from_dict({**MirasolConfig().to_dict(), "colour": 1})
