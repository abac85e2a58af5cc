"""``import_microlens`` on small fixtures in MicroLens's published layout, written by the tests."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from atflrec.cli import main
from atflrec.config import ConfigError, load_config
from atflrec.data.format import load_dataset
from atflrec.data.microlens import ImportSummary, MicroLensImportConfig, Pair, import_microlens, sample_negatives
from atflrec.data.validate import validate_dataset
from atflrec.errors import UserError

T0 = 1_600_000_000_000  # MicroLens timestamps are milliseconds
POSITIVES = {  # user -> items in chronological order
    "u1": ["1", "2", "3", "10"],  # 10 has a title but no media
    "u2": ["2", "3", "4", "11"],  # 11 has media but an empty title
    "u3": ["4", "5", "6", "12"],  # 12 has media but is not in the titles file
    "u4": ["6", "7", "8"],
    "u5": ["8", "9", "1"],
    "u6": ["9"],
}
EXTRA_ROWS = [
    ["u1", "1", str(T0 + 99_000)],  # repeat of (u1, 1), later: a duplicate
    ["u7", "5", "abc"],  # bad timestamp
    ["u7", "../5", str(T0)],  # an item id that is no safe file name
    ["u8"],  # short row
]
TITLES = {str(i): f"Clip {i}, part {i % 3}" for i in range(1, 11)} | {"11": "", "99": "Never watched"}
AUDIO_ITEMS = [str(i) for i in range(1, 10)] + ["11", "12"]


def _pairs_rows() -> list[list[str]]:
    rows = []
    for user, items in POSITIVES.items():
        rows += [[user, item, str(T0 + 1000 * k)] for k, item in enumerate(items)]
    return rows + EXTRA_ROWS


def _write_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def make_microlens(root: Path, pairs_header: tuple[str, ...] = ("user", "item", "timestamp")) -> Path:
    """MicroLens-50k-style layout: pairs CSV, titles CSV with header, a folder of <item>.wav."""
    root.mkdir(parents=True)
    _write_csv(root / "MicroLens-50k_pairs.csv", list(pairs_header), _pairs_rows())
    _write_csv(root / "MicroLens-50k_titles.csv", ["item", "title"], [[k, v] for k, v in TITLES.items()])
    audio = root / "MicroLens-50k_audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for item in AUDIO_ITEMS:
        sf.write(audio / f"{item}.wav", rng.normal(0, 0.1, 1600).astype(np.float32), 16000)
    return root


def _config(**values: object) -> MicroLensImportConfig:
    return MicroLensImportConfig(**values)


def _by_user(out: Path) -> dict[str, dict[int, list[tuple[str, int]]]]:
    """user -> label -> [(item, timestamp)]."""
    table = pq.read_table(out / "interactions.parquet").to_pylist()
    result: dict[str, dict[int, list[tuple[str, int]]]] = defaultdict(lambda: {0: [], 1: []})
    for row in table:
        result[row["user_id"]][row["label"]].append((row["item_id"], row["timestamp"]))
    return result


def test_import_validates_and_every_row_is_accounted_for(tmp_path: Path) -> None:
    src, out = make_microlens(tmp_path / "src"), tmp_path / "out"
    summary = import_microlens(src, out, _config())

    report = validate_dataset(out)
    assert report.usable and report.problems == {}, report.describe()
    dataset = load_dataset(out)
    assert sorted(dataset.items.column("item_id").to_pylist()) == sorted(str(i) for i in range(1, 10))

    assert summary.rows_read == len(_pairs_rows()) == 23
    assert dict(summary.rows_skipped) == {"malformed": 3, "duplicate": 1, "no_media": 1, "no_title": 2}
    assert summary.positives == 16 == summary.rows_read - sum(summary.rows_skipped.values())
    assert summary.items_named == 12
    assert summary.items_imported == 9 and dict(summary.items_skipped) == {"no_media": 1, "no_title": 2}
    assert summary.titles_without_interactions == 1  # item 99
    assert (summary.users, summary.audio_copied, summary.audio_extracted) == (6, 9, 0)
    assert summary.negatives == 16 and summary.negatives_short == 0
    assert summary.timestamps_in_ms
    text = summary.describe()
    assert "23 read, 16 imported as positives, 7 skipped" in text and "no_title: 2" in text

    titles = dict(zip(dataset.items.column("item_id").to_pylist(), dataset.items.column("title").to_pylist()))
    assert titles["1"] == "Clip 1, part 1"
    by_user = _by_user(out)
    seconds = T0 // 1000
    assert by_user["u1"][1] == [("1", seconds), ("2", seconds + 1), ("3", seconds + 2)]  # earliest (u1, 1) kept


def test_negatives_come_from_items_the_user_never_touched(tmp_path: Path) -> None:
    src, out = make_microlens(tmp_path / "src"), tmp_path / "out"
    import_microlens(src, out, _config(negatives_per_positive=2.0, seed=7))
    catalogue = set(pq.read_table(out / "items.parquet").column("item_id").to_pylist())
    for user, labels in _by_user(out).items():
        negatives = [item for item, _ in labels[0]]
        assert len(negatives) == len(set(negatives)), "a user's negatives repeat"
        assert not set(negatives) & set(POSITIVES[user]), f"{user} got a negative it interacted with"
        assert set(negatives) <= catalogue
        positive_times = {t for _, t in labels[1]}
        assert {t for _, t in labels[0]} <= positive_times  # a negative takes its paired positive's time


# 1000 items, 200 seen, 300 wanted: sparse (rejection) path; 30 items, 8 seen, 12 wanted: dense path
@pytest.mark.parametrize(("catalogue_size", "seen_per_user"), [(1000, 200), (30, 8)])
def test_sample_negatives_on_larger_catalogues(catalogue_size: int, seen_per_user: int) -> None:
    catalogue = [f"i{n:04d}" for n in range(catalogue_size)]
    pairs = [
        Pair(user, catalogue[(3 * k + u) % catalogue_size], 100 + k)
        for u, user in enumerate("ab")
        for k in range(seen_per_user)
    ]
    draws = [sample_negatives(pairs, catalogue, 1.5, seed, ImportSummary(out=Path("."))) for seed in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    wanted = int(1.5 * seen_per_user)
    for user in "ab":
        seen = {p.item for p in pairs if p.user == user}
        negatives = [n for n in draws[0] if n.user == user]
        assert len(negatives) == wanted and len({n.item for n in negatives}) == wanted
        assert not {n.item for n in negatives} & seen
        assert [n.timestamp for n in negatives] == [100 + k % seen_per_user for k in range(wanted)]


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, 0), (0.5, 11), (1.0, 16), (2.0, 32), (3.0, 33)])
def test_negative_ratio(tmp_path: Path, ratio: float, expected: int) -> None:
    src, out = make_microlens(tmp_path / "src"), tmp_path / "out"
    summary = import_microlens(src, out, _config(negatives_per_positive=ratio))
    by_user = _by_user(out)
    assert sum(len(labels[0]) for labels in by_user.values()) == summary.negatives == expected
    for _user, labels in by_user.items():
        wanted = int(ratio * len(labels[1]) + 0.5)
        assert len(labels[0]) == min(wanted, 9 - len(labels[1]))
    # ratio 3: users with 3 positives want 9 but only 6 items are unseen; the shortfall is counted
    assert summary.negatives_short == (5 * 3 if ratio == 3.0 else 0)


def test_same_seed_same_dataset_other_seed_other_negatives(tmp_path: Path) -> None:
    src = make_microlens(tmp_path / "src")
    first, again, other = (tmp_path / name for name in ("a", "b", "c"))
    import_microlens(src, first, _config(seed=3))
    import_microlens(src, again, _config(seed=3))
    import_microlens(src, other, _config(seed=4))
    for name in ("items.parquet", "interactions.parquet"):
        assert pq.read_table(first / name).equals(pq.read_table(again / name))
    assert not pq.read_table(first / "interactions.parquet").equals(pq.read_table(other / "interactions.parquet"))


def test_user_filters_are_counted(tmp_path: Path) -> None:
    src = make_microlens(tmp_path / "src")
    summary = import_microlens(src, tmp_path / "min", _config(min_user_interactions=3))
    assert summary.rows_skipped["user_below_min_interactions"] == 1 and summary.users == 5  # u6 has 1 positive

    picks = [set(_by_user(_import(src, tmp_path / f"max{i}", max_users=2)).keys()) for i in range(2)]
    assert picks[0] == picks[1] and len(picks[0]) == 2
    summary = import_microlens(src, tmp_path / "max9", _config(max_users=2))
    assert summary.users == 2 and summary.rows_skipped["user_not_sampled"] > 0
    assert summary.positives + sum(summary.rows_skipped.values()) == summary.rows_read
    assert summary.items_imported + sum(summary.items_skipped.values()) == summary.items_named
    assert summary.items_skipped["no_kept_interactions"] > 0
    assert validate_dataset(tmp_path / "max9").usable


def _import(src: Path, out: Path, **values: object) -> Path:
    import_microlens(src, out, _config(**values))
    return out


def test_readme_column_names_and_headerless_titles(tmp_path: Path) -> None:
    """userID/videoID header (MicroLens readme) and a headerless, unquoted 100k-style titles file."""
    src = make_microlens(tmp_path / "src", pairs_header=("userID", "videoID", "timestamp"))
    (src / "MicroLens-50k_titles.csv").unlink()
    lines = [f"{item},{title}" for item, title in TITLES.items()]
    (src / "MicroLens-100k_title_en.csv").write_text("\n".join(lines) + "\n")
    (src / "tags_to_summary.csv").write_text("1,Food\n2,Pets; Dogs\n")
    out = tmp_path / "out"
    summary = import_microlens(src, out, _config())
    assert summary.positives == 16
    items = {row["item_id"]: row for row in load_dataset(out).items.to_pylist()}
    assert items["2"]["title"] == "Clip 2, part 2"  # unquoted comma kept in the title
    assert items["2"]["tags"] == ["Pets", "Dogs"] and items["3"]["tags"] == []


def test_wrong_pairs_header_names_the_columns(tmp_path: Path) -> None:
    src = make_microlens(tmp_path / "src", pairs_header=("who", "what", "when"))
    with pytest.raises(UserError, match="no column named user or userid"):
        import_microlens(src, tmp_path / "out", _config())


def test_ambiguous_or_missing_files_are_user_errors(tmp_path: Path) -> None:
    src = make_microlens(tmp_path / "src")
    shutil.copy(src / "MicroLens-50k_pairs.csv", src / "MicroLens-100k_pairs.csv")
    with pytest.raises(UserError, match="several files .* set pairs_file"):
        import_microlens(src, tmp_path / "out", _config())
    assert import_microlens(src, tmp_path / "out", _config(pairs_file="MicroLens-100k_pairs.csv")).positives == 16
    with pytest.raises(UserError, match="does not exist"):
        import_microlens(tmp_path / "nowhere", tmp_path / "out2", _config())
    shutil.rmtree(src / "MicroLens-50k_audio")
    with pytest.raises(UserError, match="no media folder"):
        import_microlens(src, tmp_path / "out3", _config())


def test_existing_dataset_needs_overwrite(tmp_path: Path) -> None:
    src, out = make_microlens(tmp_path / "src"), tmp_path / "out"
    import_microlens(src, out, _config())
    stale = out / "audio" / "stale.wav"
    stale.write_bytes(b"x")
    with pytest.raises(UserError, match="overwrite=true"):
        import_microlens(src, out, _config())
    import_microlens(src, out, _config(overwrite=True))
    assert not stale.exists() and validate_dataset(out).usable


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="negatives_per_positive"):
        load_config(MicroLensImportConfig, None, ["negatives_per_positive=-1"])
    with pytest.raises(ConfigError, match="negatives_pre_positive: unknown key"):
        load_config(MicroLensImportConfig, None, ["negatives_pre_positive=1"])


def _add_videos(src: Path, make_real: bool) -> None:
    """Items 13 (video with a soundtrack) and 14 (video without one), watched by u9 with item 1."""
    videos = src / "MicroLens-50k_videos"
    videos.mkdir()
    for item, with_audio in (("13", True), ("14", False)):
        path = videos / f"{item}.mp4"
        if make_real:
            _make_mp4(path, with_audio)
        else:
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42")  # never decoded in these tests
    with (src / "MicroLens-50k_pairs.csv").open("a", newline="") as handle:
        csv.writer(handle).writerows([["u9", "13", str(T0)], ["u9", "14", str(T0 + 1000)], ["u9", "1", str(T0 + 2000)]])
    with (src / "MicroLens-50k_titles.csv").open("a", newline="") as handle:
        csv.writer(handle).writerows([["13", "A video"], ["14", "A silent video"]])


def _make_mp4(path: Path, with_audio: bool) -> None:
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=black:s=16x16:d=2:r=5"]
    if with_audio:
        command += ["-f", "lavfi", "-i", "sine=frequency=440:duration=2:sample_rate=44100", "-c:a", "aac"]
    command += ["-c:v", "mpeg4", "-shortest", str(path)]
    subprocess.run(command, check=True)


def test_missing_ffmpeg_is_a_clear_error_or_counted_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_microlens(tmp_path / "src")
    _add_videos(src, make_real=False)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "ffmpeg" else real_which(name, *a, **k))
    with pytest.raises(UserError, match=r"ffmpeg is needed .* apt-get install ffmpeg.*missing_ffmpeg=skip"):
        import_microlens(src, tmp_path / "out", _config())
    assert not (tmp_path / "out" / "items.parquet").exists()
    summary = import_microlens(src, tmp_path / "out", _config(missing_ffmpeg="skip"))
    assert summary.items_skipped["needs_ffmpeg"] == 2 and summary.rows_skipped["needs_ffmpeg"] == 2
    assert summary.positives == 17  # u9 keeps item 1
    assert validate_dataset(tmp_path / "out").usable


def test_cli_missing_ffmpeg_exits_2_with_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_microlens(tmp_path / "src")
    _add_videos(src, make_real=False)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert main(["data", "import-microlens", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "ffmpeg is needed" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
def test_audio_is_extracted_from_video_with_ffmpeg(tmp_path: Path) -> None:
    src = make_microlens(tmp_path / "src")
    _add_videos(src, make_real=True)
    out = tmp_path / "out"
    summary = import_microlens(src, out, _config(audio_clip_seconds=1.5))
    assert summary.audio_extracted == 1 and summary.audio_copied == 9
    assert summary.items_skipped["audio_failed"] == 1 and summary.rows_skipped["audio_failed"] == 1
    assert "14" in " ".join(summary.examples["audio_failed"])
    info = sf.info(out / "audio" / "13.wav")
    assert (info.samplerate, info.channels) == (16000, 1)
    assert info.duration == pytest.approx(1.5, abs=0.05)
    assert validate_dataset(out).problems == {}


def test_cli_imports_then_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = make_microlens(tmp_path / "src"), tmp_path / "out"
    argv = ["data", "import-microlens", str(src), "min_user_interactions=2", "--out", str(out), "--seed", "5"]
    assert main(argv + ["--negatives-per-positive", "0.5"]) == 0
    assert "15 imported as positives" in capsys.readouterr().out
    assert main(["data", "validate", str(out)]) == 0
    assert main(["data", "import-microlens", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


def test_a_symlink_out_of_the_media_folder_is_never_followed(tmp_path: Path) -> None:
    """#18 finding 8: a media name linking outside its folder (or to a FIFO) is refused and counted."""
    src, out = make_microlens(tmp_path / "src"), tmp_path / "out"
    secret = tmp_path / "secret.wav"
    sf.write(secret, np.full(1600, 0.5, np.float32), 16000)
    audio = src / "MicroLens-50k_audio"
    (audio / "1.wav").unlink()
    (audio / "1.wav").symlink_to(secret)  # item 1's only media leads out of the folder
    (audio / "2.wav").unlink()
    os.mkfifo(audio / "2.wav")  # a FIFO would block a copy for ever
    (audio / "3.wav").rename(audio / "real3.wav")
    (audio / "3.wav").symlink_to(audio / "real3.wav")  # a link inside the folder is fine

    summary = import_microlens(src, out, _config())
    items = load_dataset(out).items.column("item_id").to_pylist()
    assert "1" not in items and "2" not in items and "3" in items
    assert summary.items_skipped["unsafe_media"] == 2
    assert summary.rows_skipped["unsafe_media"] == 4  # items 1 and 2 have two pairs rows each
    assert any("outside its media folder" in e for e in summary.examples["unsafe_media"])
    assert any("not a regular file" in e for e in summary.examples["unsafe_media"])
    assert not any(p.is_symlink() for p in (out / "audio").iterdir())
    assert all(sf.read(p)[0].std() > 0 for p in (out / "audio").iterdir())  # the constant secret was not copied
    assert validate_dataset(out).usable


@pytest.mark.parametrize("name", ["MicroLens-50k_pairs.csv", "MicroLens-50k_titles.csv"])
def test_an_oversize_csv_field_is_a_clear_error(tmp_path: Path, name: str) -> None:
    src = make_microlens(tmp_path / "src")
    with (src / name).open("a", newline="") as handle:
        csv.writer(handle).writerow(["u1", "x" * (200 * 1024), "1"])  # one field over csv's 128 KiB limit
    with pytest.raises(UserError, match=rf"{name} line \d+: field larger than field limit .*131072 characters"):
        import_microlens(src, tmp_path / "out", _config())
