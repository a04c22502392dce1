"""Frame sampling and decoding."""
import builtins
import random

import pytest

from dataset.synthetic import generate
from dataset.video import VideoDecoderMissing, decode_video_file, load_frames, sample_frame_indices


def test_eval_takes_segment_centres_and_train_stays_in_segment():
    assert sample_frame_indices(12, 4, training=False) == [1, 4, 7, 10]
    rng = random.Random(0)
    for _ in range(100):
        picks = sample_frame_indices(12, 4, True, rng)
        assert all(3 * k <= p < 3 * (k + 1) for k, p in enumerate(picks))
    assert sample_frame_indices(2, 4, training=False) == [0, 0, 1, 1]
    assert sorted(set(sample_frame_indices(2, 4, True, rng))) == [0, 1]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), seed=5, n_images=2, n_videos=2)


def test_pyav_decode_matches_frame_folder(syn):
    root = syn["root"]
    video = decode_video_file(f"{root}/videos/vid_000.mp4", 4, training=False)
    frames = load_frames(f"{root}/frames/vid_000", 4, training=False)
    assert video.shape == frames.shape == (4, 3, 64, 64)
    assert (video.float() - frames.float()).abs().mean() < 12  # same content up to codec loss


def test_missing_decoder_fails_clearly(syn, monkeypatch):
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    with pytest.raises(VideoDecoderMissing, match="pip install av"):
        decode_video_file(f"{syn['root']}/videos/vid_000.mp4", 4, training=False)
