"""The built-in benchmark generator: determinism, format, and the statistics its docs claim."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torchaudio
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from atflrec.cli import main
from atflrec.config import ConfigError, load_config
from atflrec.data.format import load_dataset
from atflrec.data.synth import (
    ATTRIBUTES_FILE,
    GENERATOR,
    GENERATOR_VERSION,
    LIKES_FILE,
    STYLES,
    USERS_FILE,
    SynthConfig,
    generate,
)
from atflrec.data.validate import Severity, validate_dataset
from atflrec.errors import UserError

STATS_CONFIG = SynthConfig(users=200, items=144, seed=3)


@pytest.fixture(scope="module")
def stats_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default-shaped dataset (4 s clips, six genres) large enough for the statistics."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(STATS_CONFIG, out)
    return out


def _table(root: Path, name: str) -> pd.DataFrame:
    return pq.read_table(root / name).to_pandas()


def _joined(root: Path) -> pd.DataFrame:
    """Interactions with the hidden attributes of their item and preferences of their user."""
    return _table(root, "interactions.parquet").merge(_table(root, ATTRIBUTES_FILE), on="item_id").merge(
        _table(root, USERS_FILE), on="user_id")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _fbank(path: Path) -> np.ndarray:
    """Kaldi FBank frames as the features stage computes them: 40 bins, 25 ms / 10 ms, no dither."""
    wave, rate = sf.read(path, dtype="float32")
    frames = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(wave)[None] * 32768, num_mel_bins=40, frame_length=25.0, frame_shift=10.0,
        dither=0.0, sample_frequency=rate)
    return frames.numpy()


def _split(labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    return train_test_split(np.arange(len(labels)), test_size=1 / 3, random_state=0, stratify=labels)


def _binomial_ok(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1 / n


# --- determinism and format -------------------------------------------------------------------

def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    config = SynthConfig(users=8, items=12, seed=5, clip_seconds=1.0)
    first, second = _hashes(generate(config, tmp_path / "a").out), _hashes(generate(config, tmp_path / "b").out)
    assert first == second
    assert len(first) == 12 + 6  # clips, two tables, dataset.json, three hidden files
    other = _hashes(generate(config.model_copy(update={"seed": 6}), tmp_path / "c").out)
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in ("items.parquet", "interactions.parquet", "audio/i0001.wav"))


def test_dataset_is_valid_format_v1_with_metadata_and_hidden_files(stats_dataset: Path) -> None:
    report = validate_dataset(stats_dataset)
    assert report.usable and not report.by_severity(Severity.WARNING), report.describe()
    dataset = load_dataset(stats_dataset)
    assert dataset.items.num_rows == STATS_CONFIG.items
    for relative in dataset.items.column("audio_path").to_pylist():
        info = sf.info(dataset.audio_path(relative))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == 4 * 16000

    interactions = dataset.interactions.to_pandas()
    assert set(interactions.label.unique()) == {0, 1}
    low, high = STATS_CONFIG.interactions_per_user
    assert interactions.groupby("user_id").size().between(low, high).all()
    assert interactions.groupby("user_id").timestamp.apply(lambda s: bool((np.diff(s.to_numpy()) > 0).all())).all()
    assert not interactions.duplicated(["user_id", "item_id"]).any()

    meta = json.loads((stats_dataset / "dataset.json").read_text())
    assert meta["generator"] == {"name": GENERATOR, "version": GENERATOR_VERSION}
    assert SynthConfig.model_validate(meta["config"]) == STATS_CONFIG
    assert meta["summary"]["interactions"] == len(interactions)
    assert "sigmoid" in meta["like_function"]["formula"]

    attributes = _table(stats_dataset, ATTRIBUTES_FILE)
    assert attributes.item_id.tolist() == dataset.items.column("item_id").to_pylist()
    assert {"genre", "tempo_bpm", "mode", "energy", "quality"} <= set(attributes.columns)
    assert len(_table(stats_dataset, USERS_FILE)) == STATS_CONFIG.users
    assert len(_table(stats_dataset, LIKES_FILE)) == len(interactions)


# --- what the audio carries -------------------------------------------------------------------

def test_audio_carries_genre_energy_tempo_and_mode(stats_dataset: Path) -> None:
    items = _table(stats_dataset, "items.parquet")
    truth = _table(stats_dataset, ATTRIBUTES_FILE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small clips: thread start-up dominates, and a busy machine makes it far worse
    try:
        frames = [_fbank(stats_dataset / path) for path in items.audio_path]
    finally:
        torch.set_num_threads(threads)
    means = np.stack([f.mean(axis=0) for f in frames])
    train, test = _split(truth.genre)

    # Genre from per-clip FBank means, on held-out items (chance: 1/6).
    genre = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(means[train], truth.genre[train])
    assert genre.score(means[test], truth.genre[test]) >= 0.8

    # Energy: FBank means explain far more of it than knowing the true genre does.
    audio_r2 = make_pipeline(StandardScaler(), RidgeCV()).fit(means[train], truth.energy[train]).score(
        means[test], truth.energy[test])
    one_hot = pd.get_dummies(truth.genre).to_numpy(float)
    genre_r2 = RidgeCV().fit(one_hot[train], truth.energy[train]).score(one_hot[test], truth.energy[test])
    assert audio_r2 >= 0.8 and audio_r2 >= genre_r2 + 0.3

    # Tempo: the peak of the onset-strength autocorrelation over 55-190 BPM matches the true tempo up to
    # a factor of two (chance, for this tolerance: about 14 %).
    estimates = np.array([_tempo_bpm(f) for f in frames])
    octaves = np.log2(estimates / truth.tempo_bpm.to_numpy())
    assert np.mean(np.abs(octaves - np.round(octaves)) < 0.07) >= 0.5

    # Mode: given the tonic, the clip holds more energy on the major third than the minor one iff major.
    thirds = [_major_third_dominates(stats_dataset / p, int(k)) for p, k in zip(items.audio_path, truth.key_midi)]
    assert np.mean(np.array(thirds) == (truth["mode"] == "major").to_numpy()) >= 0.9


def _tempo_bpm(frames: np.ndarray) -> float:
    flux = np.maximum(np.diff(frames, axis=0), 0).sum(axis=1)
    flux -= flux.mean()
    autocorrelation = np.correlate(flux, flux, "full")[flux.size - 1:]
    lags = np.arange(34, 110)  # 10 ms frames: 176 down to 55 BPM
    return 6000 / lags[np.argmax(autocorrelation[lags])]


def _major_third_dominates(path: Path, key_midi: int) -> bool:
    wave, rate = sf.read(path)
    power = np.abs(np.fft.rfft(wave)) ** 2
    hz = np.fft.rfftfreq(wave.size, 1 / rate)
    band = (hz > 80) & (hz < 1000)
    pitch_class = np.round(12 * np.log2(hz[band] / 440) + 69).astype(int) % 12
    chroma = np.bincount(pitch_class, power[band], minlength=12)
    return bool(chroma[(key_midi + 4) % 12] > chroma[(key_midi + 3) % 12])


# --- what the text reveals --------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.0, 0.35, 1.0])
def test_tags_name_the_true_genre_at_the_documented_rate(tmp_path: Path, rate: float) -> None:
    config = SynthConfig(users=5, items=400, clip_seconds=0.1, tag_genre_rate=rate, tag_attribute_rate=0.0)
    summary = generate(config, tmp_path / "ds")
    items, truth = _table(tmp_path / "ds", "items.parquet"), _table(tmp_path / "ds", ATTRIBUTES_FILE)
    names = {s.name for s in STYLES[: config.genres]}
    named = [[t for t in tags if t in names] for tags in items.tags]
    assert all(len(n) == 1 for n in named)  # exactly one genre tag, right or wrong
    hits = sum(n[0] == g for n, g in zip(named, truth.genre))
    assert _binomial_ok(hits, config.items, rate)
    assert summary.tag_genre_agreement == hits / config.items
    attribute_tags = {"major key", "minor key", "slow", "mid-tempo", "fast", "calm", "energetic"}
    assert not any(attribute_tags & set(tags) for tags in items.tags)  # tag_attribute_rate 0: none


def test_titles_and_attribute_tags_reveal_only_what_their_rates_say(tmp_path: Path) -> None:
    config = SynthConfig(users=5, items=400, clip_seconds=0.1, title_genre_rate=0.5, tag_attribute_rate=1.0)
    generate(config, tmp_path / "ds")
    items, truth = _table(tmp_path / "ds", "items.parquet"), _table(tmp_path / "ds", ATTRIBUTES_FILE)
    words = {s.name: set(s.title_words) for s in STYLES}
    own = [bool(words[g] & set(title.split())) for title, g in zip(items.title, truth.genre)]
    other = [bool(set().union(*(w for name, w in words.items() if name != g)) & set(title.split()))
             for title, g in zip(items.title, truth.genre)]
    assert _binomial_ok(sum(own), config.items, 0.5) and not any(other)
    for tags, mode, energy in zip(items.tags, truth["mode"], truth.energy):
        assert f"{mode} key" in tags
        assert ("energetic" if energy >= 0.5 else "calm") in tags


# --- what users like --------------------------------------------------------------------------

def test_like_rates_follow_the_documented_function(stats_dataset: Path) -> None:
    rows = _joined(stats_dataset)
    mode = np.where(rows["mode"] == "major", 1.0, -1.0)
    tempo = np.clip((rows.tempo_bpm - 120) / 40, -1.5, 1.5)
    energy = 2 * rows.energy - 1
    acoustic = np.where(rows.acoustic, 1.0, -1.0)
    affinity = rows.apply(lambda r: r[f"affinity_{r.genre}"], axis=1)
    terms = {
        "user_bias": rows.like_bias, "genre_appeal": rows.genre_appeal, "energy_appeal": energy,
        "taste_shared": rows.taste * acoustic, "genre": affinity, "mode": rows.mode_pref * mode,
        "tempo": rows.tempo_pref * tempo, "energy": rows.energy_pref * energy, "quality": rows.quality,
    }
    # A logistic regression on the documented terms recovers the weights (the logit noise shrinks
    # them by about 1 / sqrt(1 + pi * noise**2 / 8), i.e. 5 % at the default noise 0.5).
    fitted = LogisticRegression(C=1e4, max_iter=5000).fit(np.column_stack(list(terms.values())), rows.label)
    weights = STATS_CONFIG.like
    shrink = 1 / np.sqrt(1 + np.pi * weights.noise**2 / 8)
    for (name, _), coefficient in zip(terms.items(), fitted.coef_[0]):
        expected = getattr(weights, name) * shrink
        assert abs(coefficient - expected) <= 0.3 * expected + 0.15, (name, coefficient, expected)
    assert abs(fitted.intercept_[0] - weights.bias * shrink) <= 0.3

    scored = _table(stats_dataset, LIKES_FILE).merge(rows, on=["user_id", "item_id"])
    by_quartile = scored.label.groupby(pd.qcut(scored.like_logit, 4, labels=False)).mean()
    assert by_quartile.is_monotonic_increasing and by_quartile[3] - by_quartile[0] >= 0.4


# Generator version 1's files for SynthConfig.version_1(users=8, items=12, seed=5, clip_seconds=1.0),
# fingerprinted by _content_fingerprint with the v1 code before version 2 existed.
V1_FINGERPRINT = "0409f327a1b00497052ec348c87315ed7912621ed81a1007566a8cb7b3fa3464"


def _content_fingerprint(root: Path) -> str:
    """The tables' rows and the clips' bytes (not Parquet's bytes, which name the writer's version)."""
    digest = hashlib.sha256()
    for name in ("items.parquet", "interactions.parquet", LIKES_FILE):
        digest.update(json.dumps(pq.read_table(root / name).to_pylist(), sort_keys=True, default=str).encode())
    for clip in sorted((root / "audio").glob("*.wav")):
        digest.update(clip.name.encode())
        digest.update(clip.read_bytes())
    return digest.hexdigest()


def test_version_1_settings_still_write_version_1_files(tmp_path: Path) -> None:
    config = SynthConfig.version_1(users=8, items=12, seed=5, clip_seconds=1.0)
    assert config.like.user_bias == config.like.taste_shared == config.audible_quality == 0
    assert _content_fingerprint(generate(config, tmp_path / "v1").out) == V1_FINGERPRINT
    assert _content_fingerprint(generate(SynthConfig(users=8, items=12, seed=5, clip_seconds=1.0),
                                         tmp_path / "v2").out) != V1_FINGERPRINT


def test_low_quality_is_heard_only_when_audible(stats_dataset: Path, tmp_path: Path) -> None:
    items, truth = _table(stats_dataset, "items.parquet"), _table(stats_dataset, ATTRIBUTES_FILE)
    assert truth.defect.between(0, STATS_CONFIG.audible_quality).all()
    assert truth.defect.corr(truth.quality, method="spearman") <= -0.5  # part of quality, not all of it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        frames = [_fbank(stats_dataset / path) for path in items.audio_path]
    finally:
        torch.set_num_threads(threads)
    pooled = np.stack([np.concatenate([f.mean(axis=0), f.std(axis=0), f.min(axis=0)]) for f in frames])
    train, test = _split(truth.genre)
    heard = make_pipeline(StandardScaler(), RidgeCV()).fit(pooled[train], truth.defect[train]).score(
        pooled[test], truth.defect[test])
    assert heard >= 0.5
    silent = generate(STATS_CONFIG.model_copy(update={"audible_quality": 0.0, "users": 2, "items": 12}),
                      tmp_path / "silent").out
    assert (_table(silent, ATTRIBUTES_FILE).defect == 0).all()


def test_popularity_is_skewed_towards_high_quality_items(stats_dataset: Path) -> None:
    rows = _joined(stats_dataset)
    per_item = rows.groupby("item_id").agg(seen=("label", "size"), quality=("quality", "first"))
    top_decile = per_item.seen.sort_values(ascending=False).iloc[: len(per_item) // 10].sum()
    assert top_decile / per_item.seen.sum() >= 0.2  # uniform exposure would give about 0.1
    assert per_item.seen.corr(per_item.quality, method="spearman") >= 0.5


# --- configuration and command line -----------------------------------------------------------

@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tag_genre_rate=1.5", "tag_genre_rate"),
        ("title_genre_rate=-0.1", "title_genre_rate"),
        ("interactions_per_user=[5,2]", "interactions_per_user"),
        ("genres=9", "genres"),
        ("items=0", "items"),
        ("like.noise=-1", "like.noise"),
        ("like.genres=1", "like.genres"),
    ],
)
def test_bad_config_values_are_rejected_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{key}: "):
        load_config(SynthConfig, overrides=[override])


def test_config_round_trips_through_overrides() -> None:
    config = load_config(SynthConfig, overrides=["interactions_per_user=[3,4]", "like.bias=-0.5", "seed=9"])
    assert config.interactions_per_user == (3, 4) and config.like.bias == -0.5 and config.seed == 9


def test_cli_writes_a_dataset_and_regenerates_it_in_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert main(["data", "synth", "--out", str(out), "--users", "10", "--items", "12"]) == 0
    assert "interactions" in capsys.readouterr().out
    assert len(list((out / "audio").glob("*.wav"))) == 12
    assert validate_dataset(out).usable
    # A smaller rerun into the same directory replaces the dataset and leaves no stale clips.
    assert main(["data", "synth", "--out", str(out), "--users", "3", "--items", "5", "clip_seconds=0.5"]) == 0
    assert sorted(p.name for p in (out / "audio").iterdir()) == [f"i000{i}.wav" for i in range(1, 6)]
    assert load_dataset(out).items.num_rows == 5


def test_refuses_to_write_into_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate(SynthConfig(users=2, items=2, clip_seconds=0.1), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
