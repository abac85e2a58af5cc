"""The Ray Data feature pipeline end to end on a real Ray cluster and real files.

One dataset mixes good clips with every bad-input kind; it is featurised once per module and
several tests read that store. The incremental lifecycle runs on its own copy.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torchaudio
from torchaudio.compliance import kaldi

from atflrec.cli import main
from atflrec.features.audio import REASONS
from atflrec.features.fbank import KALDI_OPTIONS
from atflrec.features.pipeline import FeatureConfig, FeatureSummary, build_feature_store
from atflrec.features.store import load_features, read_feature_table, read_manifest, read_quarantine

N_MELS = [40, 64, 80, 128]
CLIP_SECONDS = 2.0
FRAMES = 198  # 2 s at 16 kHz, 25 ms frames every 10 ms
HAS_FFMPEG = shutil.which("ffmpeg") is not None

# item_id -> expected quarantine reason (None: featurised)
EXPECTED = {
    "long": None,  # 3 s: centre kept
    "short": None,  # 1 s: padded
    "mono16": None,
    "stereo44": None,  # same signal as mono16, stereo at 44.1 kHz
    "flac": None,
    "empty": "empty",
    "corrupt": "unreadable",
    "truncated": "truncated",
    "tiny": "too-short",
    "silent": "silent",
    "nan": "non-finite",
    "missing": "missing",
    "absolute": "unsafe-path",
    "dotdot": "unsafe-path",
    "symlink": "unsafe-path",
    "text": "unsupported-format",
    "unknown-ext": "unsupported-format",
    "mp3": None if HAS_FFMPEG else "needs-ffmpeg",
    "fifo": "not-a-file",  # a FIFO named *.wav: reading it would wait for ever
    "hours": "too-long",  # a FLAC header declaring 10 hours
    "rate100": "sample-rate",  # 100 Hz: would be up-sampled 160x
}


def write(path: Path, samples: np.ndarray, rate: int = 16000, **kwargs: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, rate, **kwargs)


def build_mixed_dataset(root: Path, outside: Path, tone, make_dataset) -> dict[str, np.ndarray]:
    """Write the mixed dataset; returns the float32 samples of the good 16 kHz mono clips."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    clips = {"long": tone(3.0, seed=1), "short": tone(1.0, seed=2), "mono16": tone(2.0, seed=3),
             "flac": tone(2.5, seed=4)}
    for name in ("long", "short", "mono16"):
        write(audio / f"{name}.wav", clips[name], subtype="FLOAT")
    write(audio / "flac.flac", clips["flac"], subtype="PCM_24")
    clips["flac"] = sf.read(audio / "flac.flac", dtype="float32")[0]  # what decoding gives back
    up = torchaudio.functional.resample(torch.from_numpy(clips["mono16"]), 16000, 44100).numpy()
    write(audio / "stereo44.wav", np.stack([1.2 * up, 0.8 * up], axis=1), 44100)
    (audio / "empty.wav").write_bytes(b"")
    (audio / "corrupt.wav").write_bytes(b"RIFF but nothing sensible follows " * 30)
    buffer = io.BytesIO()
    sf.write(buffer, tone(1.0), 16000, format="WAV", subtype="PCM_16")
    (audio / "truncated.wav").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    write(audio / "tiny.wav", tone(0.01))
    write(audio / "silent.wav", np.zeros(16000, np.float32))
    with_nan = tone(1.0)
    with_nan[500] = np.nan
    write(audio / "nan.wav", with_nan, subtype="FLOAT")
    write(outside / "outside.wav", tone(1.0))
    os.symlink(outside / "outside.wav", audio / "link.wav")
    (audio / "notes.txt").write_text("not audio\n")
    write(audio / "clip.xyz", tone(1.0), format="WAV")
    write(audio / "song.mp3", tone(1.0), format="MP3", subtype="MPEG_LAYER_III")
    os.mkfifo(audio / "fifo.wav")
    write(audio / "hours.flac", tone(1.0), subtype="PCM_16")
    head = (audio / "hours.flac").read_bytes()
    bits = int.from_bytes(head[18:26], "big") & ~((1 << 36) - 1) | 10 * 3600 * 16000  # STREAMINFO total samples
    (audio / "hours.flac").write_bytes(head[:18] + bits.to_bytes(8, "big") + head[26:])
    write(audio / "rate100.wav", tone(10.0, sample_rate=100), 100)
    make_dataset(root, {
        "long": "audio/long.wav", "short": "audio/short.wav", "mono16": "audio/mono16.wav",
        "stereo44": "audio/stereo44.wav", "flac": "audio/flac.flac", "empty": "audio/empty.wav",
        "corrupt": "audio/corrupt.wav", "truncated": "audio/truncated.wav", "tiny": "audio/tiny.wav",
        "silent": "audio/silent.wav", "nan": "audio/nan.wav", "missing": "audio/nowhere.wav",
        "absolute": str(outside / "outside.wav"), "dotdot": "../outside/outside.wav", "symlink": "audio/link.wav",
        "text": "audio/notes.txt", "unknown-ext": "audio/clip.xyz", "mp3": "audio/song.mp3",
        "fifo": "audio/fifo.wav", "hours": "audio/hours.flac", "rate100": "audio/rate100.wav",
    })
    return clips


Built = tuple[Path, Path, dict[str, np.ndarray], FeatureSummary]  # dataset, store, clean clips, summary


@pytest.fixture(scope="module")
def built(ray_cluster, tmp_path_factory, tone, make_dataset) -> Built:
    base = tmp_path_factory.mktemp("featstore")
    data = base / "dataset"
    clips = build_mixed_dataset(data, base / "outside", tone, make_dataset)
    summary = build_feature_store(data, str(base / "store"), FeatureConfig(n_mels=N_MELS, clip_seconds=CLIP_SECONDS))
    return data, base / "store", clips, summary


def part_files(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.glob("mel*/part-*.parquet")}


def test_counts_add_up_in_summary_and_manifest(built) -> None:
    _, store, _, summary = built
    good = sorted(i for i, r in EXPECTED.items() if r is None)
    assert (summary.inputs, summary.featurised, summary.skipped) == (len(EXPECTED), len(good), 0)
    assert summary.inputs == summary.featurised + summary.skipped + summary.quarantined
    assert "input items = " in summary.describe()
    manifest = read_manifest(str(store))
    counts = manifest["last_run"]["counts"]
    assert counts == {"inputs": len(EXPECTED), "featurised": len(good), "skipped": 0,
                      "quarantined": len(EXPECTED) - len(good), "dropped": 0, "kept_without_audio": 0}
    assert manifest["stored_items"] == len(good) and manifest["params"]["n_mels"] == N_MELS
    index = pq.read_table(store / manifest["index"])
    assert sorted(index.column("item_id").to_pylist()) == good
    assert {p.split("/")[0] for p in part_files(store)} == {f"mel{n}" for n in N_MELS}


def test_each_bad_input_kind_is_quarantined_with_its_reason(built) -> None:
    _, store, _, summary = built
    table = read_quarantine(str(store))
    got = dict(zip(table.column("item_id").to_pylist(), table.column("reason").to_pylist()))
    assert got == {i: r for i, r in EXPECTED.items() if r is not None}
    assert set(got.values()) <= set(REASONS)
    assert all(table.column("detail").to_pylist()) and "audio/nowhere.wav" in table.column("path").to_pylist()
    assert sum(summary.reasons.values()) == summary.quarantined


@pytest.mark.parametrize("n_mels", N_MELS)
def test_stored_features_equal_torchaudio_fbank(built, n_mels: int) -> None:
    _, store, clips, _ = built
    features = load_features(str(store), n_mels)
    expected_waves = {"long": clips["long"][8000:40000], "short": clips["short"], "mono16": clips["mono16"],
                      "flac": clips["flac"][4000:36000]}
    for item, wave in expected_waves.items():
        ref = kaldi.fbank(torch.from_numpy(wave).unsqueeze(0), num_mel_bins=n_mels, **KALDI_OPTIONS).numpy()
        got = features[item]
        assert got.dtype == np.float16 and got.shape == ref.shape, item
        # Equal up to float16 rounding (half an ulp: 2**-11 relative).
        np.testing.assert_allclose(got.astype(np.float32), ref, rtol=2.0**-11, atol=1e-6, err_msg=item)


def test_feature_table_has_fixed_shape_and_pads_short_clips(built) -> None:
    _, store, _, _ = built
    table = read_feature_table(str(store), 80, item_ids=["short", "long", "corrupt"])
    assert sorted(table.column("item_id").to_pylist()) == ["long", "short"]  # quarantined ids are absent
    arrays = table.column("features").combine_chunks().to_numpy_ndarray()
    assert arrays.shape == (2, FRAMES, 80) and arrays.dtype == np.float16
    frames = dict(zip(table.column("item_id").to_pylist(), table.column("n_frames").to_pylist()))
    assert frames == {"long": FRAMES, "short": 98}


def test_stereo_44k_item_matches_its_mono_16k_item(built) -> None:
    _, store, _, _ = built
    features = load_features(str(store), 64, item_ids=["mono16", "stereo44"])
    diff = np.abs(features["mono16"].astype(np.float32) - features["stereo44"].astype(np.float32))
    # Resampling's anti-alias roll-off starts near 7.9 kHz: compare the bands below 6.5 kHz.
    _, centres = kaldi.get_mel_banks(64, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)
    below = (centres.squeeze(1) < 6500).numpy()
    assert diff[:, below].mean() < 0.05 and diff[:, below].max() < 0.5


def test_incremental_rerun_add_change_and_new_parameters(built, tmp_path: Path, tone, make_dataset) -> None:
    data_src, store_src, _, _ = built
    data, store = tmp_path / "dataset", tmp_path / "store"
    shutil.copytree(data_src, data, symlinks=True, ignore=shutil.ignore_patterns("fifo.wav"))  # copying waits on it
    os.mkfifo(data / "audio" / "fifo.wav")
    shutil.copytree(store_src, store)
    config = FeatureConfig(n_mels=N_MELS, clip_seconds=CLIP_SECONDS)
    good = [i for i, r in EXPECTED.items() if r is None]
    parts = part_files(store)
    index_name = read_manifest(str(store))["index"]

    rerun = build_feature_store(data, str(store), config)
    assert (rerun.featurised, rerun.skipped, rerun.quarantined) == (0, len(good), len(EXPECTED) - len(good))
    assert part_files(store) == parts and read_manifest(str(store))["index"] == index_name

    # One new item, one changed clip: exactly those two are featurised.
    sf.write(data / "audio" / "new.wav", tone(2.0, seed=9), 16000)
    sf.write(data / "audio" / "short.wav", tone(1.5, seed=8), 16000)
    items = pq.read_table(data / "items.parquet")
    paths = dict(zip(items.column("item_id").to_pylist(), items.column("audio_path").to_pylist()))
    make_dataset(data, paths | {"new": "audio/new.wav"})
    before = load_features(str(store), 40)
    added = build_feature_store(data, str(store), config)
    assert (added.inputs, added.featurised, added.skipped) == (len(EXPECTED) + 1, 2, len(good) - 1)
    new_parts = [p for p in part_files(store) - parts if p.startswith("mel40/")]
    new_items = [i for p in new_parts for i in pq.read_table(store / p).column("item_id").to_pylist()]
    assert sorted(new_items) == ["new", "short"]
    after = load_features(str(store), 40)
    assert after["short"].shape == (148, 40) and not np.array_equal(after["short"][:98], before["short"])
    np.testing.assert_array_equal(after["long"], before["long"])

    # A parameter change recomputes every stored item; the old parts are deleted (and with --prune
    # the Mel-bin counts left out of n_mels too: without it they are kept, test_store_safety.py).
    changed = build_feature_store(data, str(store), FeatureConfig(n_mels=[40], clip_seconds=1.0, prune=True))
    assert (changed.featurised, changed.skipped) == (len(good) + 1, 0)
    assert {p.split("/")[0] for p in part_files(store)} == {"mel40"}
    assert load_features(str(store), 40)["long"].shape == (98, 40)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["params"]["clip_seconds"] == 1.0 and manifest["last_run"]["counts"]["featurised"] == len(good) + 1


def test_cli_features_prints_the_accounting(ray_cluster, tmp_path: Path, tone, make_dataset, capfd) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", tone(1.0), 16000)
    (data / "b.wav").write_bytes(b"")
    make_dataset(data, {"a": "a.wav", "b": "b.wav"})
    code = main(["features", "--data", str(data), "--out", str(tmp_path / "store"), "--n-mels", "40,80",
                 "--clip-seconds", "1", "batch_size=8", "--log-dir", str(tmp_path / "logs")])
    out = capfd.readouterr().out  # quiet mode: our lines on the terminal (fd 1), Ray's in the log
    assert code == 0
    [log] = (tmp_path / "logs").glob("atflrec-features-*.log")
    assert "featurising 2 items" not in log.read_text()
    assert "2 input items = 1 featurised + 0 already stored + 1 quarantined" in out
    assert "1 empty" in out
    assert sorted(load_features(str(tmp_path / "store"), 80)) == ["a"]
