"""The file runner's chunked input: the same blocks as reading the file block by block."""

import numpy as np
import pytest
import soundfile as sf

from player.filemode import READ_CHUNK_BLOCKS, read_blocks


@pytest.mark.parametrize("n_samples", [1, 441, 882 * READ_CHUNK_BLOCKS, 882 * READ_CHUNK_BLOCKS + 1, 100_003])
def test_read_blocks_gives_soundfiles_blocks(tmp_path, n_samples):
    rng = np.random.default_rng(n_samples)
    audio = (0.5 * rng.standard_normal((n_samples, 2))).astype(np.float32)
    path = tmp_path / "u.wav"
    sf.write(path, audio, 44100, subtype="FLOAT")
    ours = list(read_blocks(path, 882))
    theirs = list(sf.blocks(str(path), blocksize=882, dtype="float32", always_2d=True))
    assert len(ours) == len(theirs) == -(-n_samples // 882)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.concatenate(ours), audio)
