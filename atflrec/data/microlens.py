"""``atflrec data import-microlens``: MicroLens's published layout into dataset format v1.

Expected under SRC (each name is a glob pattern in :class:`MicroLensImportConfig`; a pattern
matching several files is an error that asks you to name one):

``MicroLens-*_pairs.csv``
    One interaction per row. Header ``user,item,timestamp`` (the published files) or
    ``userID,videoID,timestamp`` (the names the MicroLens readme uses). The published timestamps
    are milliseconds; format v1 wants seconds, so ``timestamp_unit: auto`` divides by 1000 when the
    largest timestamp is too large to be seconds (>= 1e11).
``MicroLens-*_title*.csv``
    ``item,title`` with a header (MicroLens-50k_titles.csv) or headerless ``<id>,<title>`` rows
    (MicroLens-100k_title_en.csv); the rest of an unquoted row is the title, commas included.
``tags_to_summary.csv`` (optional)
    ``<id>,<category>`` rows, with or without a header; the category becomes the item's tags.
media folders (``MicroLens-*_audio*``, ``MicroLens-*_videos``, ``audio``, ``audios``, ``videos``)
    ``<item id>.<ext>``: audio (wav, flac, ogg, mp3) is copied as is; video (mp4, mkv, webm, mov,
    avi) has its soundtrack extracted with ffmpeg to mono 16 kHz WAV, the first
    ``audio_clip_seconds`` of it. An item with both uses the audio file. Only regular files are
    used, and a symlink must resolve inside its media folder: one that leads out of it (or to a
    FIFO, device or folder) is never read, and an item with no other media is skipped as
    ``unsafe_media`` (an example names the link and its target).

CSV fields are limited to Python's default of 131072 characters (128 KiB; MicroLens fields are
ids, timestamps, titles and categories); a longer field is a :class:`UserError` naming the file
and line, not a traceback.

What becomes of each pairs row, in order (every row lands in exactly one bucket, see
:class:`ImportSummary`): malformed rows are skipped; a repeated (user, item) keeps its earliest
row; rows whose item has no title, no media, or only video while ffmpeg is absent (with
``missing_ffmpeg: skip``; the default is an error) are skipped; users with fewer than
``min_user_interactions`` rows are dropped, and at most ``max_users`` users are kept (a seeded
sample); rows whose audio cannot be extracted are skipped, and the minimum is applied again.

Negatives: MicroLens interactions are implicit positives (label 1). For each user with ``n``
positives, ``round(negatives_per_positive * n)`` negatives (label 0) are drawn without replacement
from the imported items the user never interacted with, seeded by ``seed``. The k-th negative is
paired with the user's k-th positive (chronologically, cycling) and takes its timestamp, so a
negative sits where the user was known to be active. Users who have too few such items get fewer
negatives; the shortfall is counted.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import stat
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pyarrow as pa
from pydantic import Field

from atflrec.config import StrictModel
from atflrec.data.format import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    interactions_table,
    items_table,
    write_dataset,
)
from atflrec.errors import UserError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
AUDIO_DIR = "audio"
USER_COLUMNS = ("user", "userid", "user_id")
ITEM_COLUMNS = ("item", "videoid", "video_id", "item_id", "itemid")
TIMESTAMP_COLUMNS = ("timestamp", "time", "ts")
TITLE_COLUMNS = ("title", "title_en")
TAG_COLUMNS = ("category", "tags", "tag")
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # item ids become file names
MS_THRESHOLD = 10**11  # larger "seconds" would be after the year 5000
MAX_EXAMPLES = 3
FFMPEG_TIMEOUT_S = 600
FFMPEG_HELP = (
    "install it (Debian/Ubuntu: apt-get install ffmpeg; macOS: brew install ffmpeg; "
    "conda: conda install -c conda-forge ffmpeg)"
)


class MicroLensImportConfig(StrictModel):
    """How to read a MicroLens directory and turn implicit interactions into labelled ones."""

    negatives_per_positive: float = Field(1.0, ge=0, description="sampled negatives per positive (per user, rounded)")
    seed: int = Field(0, ge=0, description="seed for the user sample and negative sampling")
    min_user_interactions: int = Field(1, ge=1, description="drop users with fewer positives")
    max_users: int | None = Field(None, ge=1, description="keep a seeded sample of at most this many users")
    timestamp_unit: Literal["auto", "s", "ms"] = "auto"
    audio_clip_seconds: float | None = Field(
        30.0, gt=0, description="seconds of audio extracted from each video (null = all); audio files are copied whole"
    )
    sample_rate: int = Field(16000, ge=8000, description="sample rate of audio extracted from video")
    missing_ffmpeg: Literal["error", "skip"] = Field("error", description="video-only items without ffmpeg")
    pairs_file: str = "MicroLens-*_pairs.csv"
    titles_file: str = "MicroLens-*_title*.csv"
    tags_file: str = "tags_to_summary.csv"
    media_dirs: list[str] = ["MicroLens-*_audio*", "MicroLens-*_videos", "audio", "audios", "videos"]
    workers: int = Field(4, ge=1, description="parallel audio copies / ffmpeg processes")
    overwrite: bool = Field(False, description="replace an existing dataset in --out")


class Pair(NamedTuple):
    user: str
    item: str
    timestamp: int


@dataclass
class ImportSummary:
    """Where every input row and item went. rows_read == positives + sum(rows_skipped);
    items_named == items_imported + sum(items_skipped)."""

    out: Path
    rows_read: int = 0
    positives: int = 0
    rows_skipped: Counter[str] = field(default_factory=Counter)
    negatives: int = 0
    negatives_short: int = 0
    users: int = 0
    items_named: int = 0
    items_imported: int = 0
    items_skipped: Counter[str] = field(default_factory=Counter)
    titles_without_interactions: int = 0
    audio_copied: int = 0
    audio_extracted: int = 0
    timestamps_in_ms: bool = False
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, reason: str, example: str) -> None:
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    def as_dict(self) -> dict[str, object]:
        """The counts, for dataset.json."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("out", "examples")}
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in counts.items()}

    def describe(self) -> str:
        lines = [
            f"imported MicroLens into {self.out}",
            f"  pairs rows: {self.rows_read} read, {self.positives} imported as positives, "
            f"{sum(self.rows_skipped.values())} skipped{_breakdown(self.rows_skipped)}",
            f"  negatives: {self.negatives} sampled ({self.negatives_short} short: users with too few unseen items)",
            f"  users: {self.users}; items named by pairs: {self.items_named}, {self.items_imported} imported "
            f"(audio {self.audio_copied} copied, {self.audio_extracted} extracted from video), "
            f"{sum(self.items_skipped.values())} skipped{_breakdown(self.items_skipped)}",
            f"  items in the titles file that no pairs row names (not imported): {self.titles_without_interactions}",
        ]
        if self.timestamps_in_ms:
            lines.append("  timestamps were milliseconds; converted to seconds")
        for reason, shown in sorted(self.examples.items()):
            lines.append(f"  e.g. {reason}: " + "; ".join(shown))
        lines.append(f"  check it with: atflrec data validate {self.out}")
        return "\n".join(lines)


def _breakdown(counts: Counter[str]) -> str:
    parts = [f"{reason}: {n}" for reason, n in sorted(counts.items()) if n]
    return f" ({', '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class SourceFiles:
    pairs: Path
    titles: Path
    tags: Path | None
    media_dirs: list[Path]


def import_microlens(src: str | Path, out: str | Path, config: MicroLensImportConfig) -> ImportSummary:
    """Read MicroLens's layout at ``src`` and write a format-v1 dataset to ``out``."""
    src, out = Path(src), Path(out)
    files = locate_sources(src, config)
    _check_out(out, config.overwrite)
    summary = ImportSummary(out=out)
    pairs = read_pairs(files.pairs, config.timestamp_unit, summary)
    titles = read_keyed_csv(files.titles, TITLE_COLUMNS)
    tags = read_keyed_csv(files.tags, TAG_COLUMNS) if files.tags else {}
    refused: dict[str, str] = {}  # item -> why its only media file(s) were not used
    media = index_media(files.media_dirs, refused)
    named = {p.item for p in pairs}
    summary.items_named = len(named)
    summary.titles_without_interactions = len(titles.keys() - named)
    fates: dict[str, str] = {}  # item -> why it was not imported

    pairs = _dedupe(pairs, summary)
    pairs = _drop_unusable_items(pairs, titles, media, config, fates, summary, refused)
    pairs = _min_interactions(pairs, config.min_user_interactions, summary)
    pairs = _sample_users(pairs, config.max_users, np.random.default_rng([config.seed, 0]), summary)
    _prepare_audio_dir(out)
    audio = _materialise_audio(sorted({p.item for p in pairs}), media, out, config, fates, summary)
    pairs = _drop_rows(pairs, lambda p: p.item not in audio, "audio_failed", summary)
    pairs = _min_interactions(pairs, config.min_user_interactions, summary)
    if not pairs:
        raise UserError(f"nothing to import from {src}: every pairs row was skipped{_breakdown(summary.rows_skipped)}")

    catalogue = sorted({p.item for p in pairs})
    fates.update({item: "no_kept_interactions" for item in named - set(catalogue) - fates.keys()})
    summary.items_skipped = Counter(fates.values())
    negatives = sample_negatives(pairs, catalogue, config.negatives_per_positive, config.seed, summary)
    summary.items_imported, summary.positives, summary.negatives = len(catalogue), len(pairs), len(negatives)
    summary.users = len({p.user for p in pairs})
    metadata = {
        "source": "microlens",
        "src": str(src),
        "config": config.model_dump(mode="json"),
        "import": summary.as_dict(),
    }
    write_dataset(out, _items(catalogue, titles, tags, audio), _interactions(pairs, negatives), metadata)
    return summary


# --- locating and reading the source --------------------------------------------------------

def locate_sources(src: Path, config: MicroLensImportConfig) -> SourceFiles:
    if not src.is_dir():
        raise UserError(f"MicroLens directory {str(src)!r} does not exist")
    media_dirs = sorted({d for pattern in config.media_dirs for d in src.glob(pattern) if d.is_dir()})
    if not media_dirs:
        raise UserError(f"no media folder under {src} (looked for {', '.join(config.media_dirs)}); set media_dirs")
    return SourceFiles(
        pairs=_find_one(src, config.pairs_file, "pairs_file"),
        titles=_find_one(src, config.titles_file, "titles_file"),
        tags=_find_one(src, config.tags_file, "tags_file", required=False),
        media_dirs=media_dirs,
    )


def _find_one(src: Path, pattern: str, key: str, required: bool = True) -> Path | None:
    matches = sorted(p for p in src.glob(pattern) if p.is_file())
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise UserError(f"{key}: several files in {src} match {pattern!r} ({names}); set {key} to one of them")
    if not matches and required:
        raise UserError(f"{key}: no file in {src} matches {pattern!r}")
    return matches[0] if matches else None


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a dataset (unless overwrite) or an audio folder that is not one's."""
    existing = [name for name in (ITEMS_FILE, INTERACTIONS_FILE) if (out / name).exists()]
    if existing and not overwrite:
        raise UserError(f"{out} already holds a dataset ({', '.join(existing)}); pass overwrite=true to replace it")
    if not existing and (out / AUDIO_DIR).exists():
        raise UserError(f"{out / AUDIO_DIR} exists but {out} holds no dataset; choose a new or empty --out")


def _prepare_audio_dir(out: Path) -> None:
    """An empty ``out/audio``; audio of a dataset being overwritten must not linger unreferenced."""
    shutil.rmtree(out / AUDIO_DIR, ignore_errors=True)
    (out / AUDIO_DIR).mkdir(parents=True)


def _column(header: list[str], names: tuple[str, ...], path: Path) -> int:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    raise UserError(f"{path.name}: no column named {' or '.join(names)} in header {header}")


def _csv_rows(path: Path) -> Iterator[list[str]]:
    """The rows of a CSV file; a malformed file (e.g. a field over ``csv.field_size_limit()``, 128 KiB
    by default) raises a :class:`UserError` naming the file and line instead of a traceback."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        try:
            yield from reader
        except csv.Error as exc:
            raise UserError(
                f"{path.name} line {reader.line_num}: {exc} (CSV fields may hold at most "
                f"{csv.field_size_limit()} characters; is this the right file?)"
            ) from None


def read_pairs(path: Path, unit: str, summary: ImportSummary) -> list[Pair]:
    """Well-formed pairs rows (malformed ones are counted), timestamps in seconds."""
    with closing(_csv_rows(path)) as rows:  # closes the file even when the header is refused
        header = next(rows, None)
        if header is None:
            raise UserError(f"{path.name} is empty")
        columns = [_column(header, names, path) for names in (USER_COLUMNS, ITEM_COLUMNS, TIMESTAMP_COLUMNS)]
        pairs = []
        for line, row in enumerate(rows, start=2):
            summary.rows_read += 1
            pair = _parse_pair(row, columns)
            if pair is None:
                summary.rows_skipped["malformed"] += 1
                summary.note("malformed", f"{path.name} line {line}: {row}")
            else:
                pairs.append(pair)
    summary.timestamps_in_ms = unit == "ms" or (unit == "auto" and any(p.timestamp >= MS_THRESHOLD for p in pairs))
    if summary.timestamps_in_ms:
        pairs = [p._replace(timestamp=p.timestamp // 1000) for p in pairs]
    return pairs


def _parse_pair(row: list[str], columns: list[int]) -> Pair | None:
    if len(row) <= max(columns):
        return None
    user, item, timestamp = (row[i].strip() for i in columns)
    if not user or not SAFE_ID.fullmatch(item):
        return None
    try:
        return Pair(user, item, int(timestamp))
    except ValueError:
        return None


def read_keyed_csv(path: Path, value_names: tuple[str, ...]) -> dict[str, str]:
    """``id -> value`` from a CSV with or without a header; an unquoted value may hold commas."""
    rows = [row for row in _csv_rows(path) if row]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    key_col, value_col, width = 0, 1, 2  # headerless: <id>,<value...>
    if any(cell in ITEM_COLUMNS for cell in header):
        key_col = _column(header, ITEM_COLUMNS, path)
        value_col = _column(header, value_names, path)
        width = len(header)
        rows = rows[1:]
    values = {}
    for row in rows:
        if len(row) > max(key_col, value_col) and row[key_col].strip():
            value = ",".join(row[value_col:]) if value_col == width - 1 else row[value_col]
            values[row[key_col].strip()] = value.strip()
    return values


def index_media(dirs: Iterable[Path], refused: dict[str, str] | None = None) -> dict[str, Path]:
    """``item id -> media file``, preferring audio over video, then the first folder.

    Only regular files whose real path lies inside their (resolved) media folder count: a symlink
    out of the folder, or to a FIFO, device or folder, is never followed; ``refused`` collects
    ``item id -> why`` for such names (an item that also has a usable file is not refused)."""
    audio: dict[str, Path] = {}
    video: dict[str, Path] = {}
    problems: dict[str, str] = {}
    for folder in dirs:
        root = folder.resolve()
        for path in sorted(folder.iterdir()):
            suffix = path.suffix.lower()
            found = audio if suffix in AUDIO_EXTENSIONS else video if suffix in VIDEO_EXTENSIONS else None
            if found is None:
                continue
            problem = _media_problem(path, root)
            if problem:
                problems.setdefault(path.stem, problem)
            else:
                found.setdefault(path.stem, path)
    media = {**video, **audio}
    if refused is not None:
        refused.update({item: why for item, why in problems.items() if item not in media})
    return media


def _media_problem(path: Path, root: Path) -> str | None:
    """Why ``path`` may not be read as media of the folder ``root`` (resolved), or None."""
    try:
        real = path.resolve(strict=True)
        mode = os.stat(real).st_mode
    except (OSError, RuntimeError) as exc:  # dangling link, loop, no permission
        return f"{path.name}: {type(exc).__name__}: {exc}"
    if root not in real.parents:
        return f"{path.name} is a symlink to {real}, outside its media folder {root}"
    if not stat.S_ISREG(mode):
        return f"{path.name} is not a regular file"
    return None


# --- filtering ------------------------------------------------------------------------------

def _drop_rows(pairs: list[Pair], drop: Callable[[Pair], bool], reason: str, summary: ImportSummary) -> list[Pair]:
    kept = []
    for pair in pairs:
        if drop(pair):
            summary.rows_skipped[reason] += 1
        else:
            kept.append(pair)
    return kept


def _dedupe(pairs: list[Pair], summary: ImportSummary) -> list[Pair]:
    """One row per (user, item): the earliest; later repeats are counted as duplicates."""
    first: dict[tuple[str, str], Pair] = {}
    for pair in sorted(pairs, key=lambda p: (p.timestamp, p.user, p.item)):
        first.setdefault((pair.user, pair.item), pair)
    summary.rows_skipped["duplicate"] += len(pairs) - len(first)
    return [pair for pair in pairs if first[(pair.user, pair.item)] is pair]


def _drop_unusable_items(
    pairs: list[Pair],
    titles: dict[str, str],
    media: dict[str, Path],
    config: MicroLensImportConfig,
    fates: dict[str, str],
    summary: ImportSummary,
    refused: dict[str, str] | None = None,
) -> list[Pair]:
    """Skip items without a title or media (or needing the absent ffmpeg), and their rows."""
    refused = refused or {}
    reasons = {item: _item_problem(item, titles, media, refused) for item in {p.item for p in pairs}}
    video_only = sorted(item for item, reason in reasons.items() if reason is None and _is_video(media[item]))
    if video_only and shutil.which("ffmpeg") is None:
        if config.missing_ffmpeg == "error":
            raise UserError(
                f"ffmpeg is needed to extract audio from {len(video_only)} video(s) (e.g. {media[video_only[0]]}) "
                f"but is not on PATH: {FFMPEG_HELP}; or set missing_ffmpeg=skip to skip those items"
            )
        reasons.update({item: "needs_ffmpeg" for item in video_only})
    for item, reason in sorted(reasons.items()):
        if reason is not None:
            fates[item] = reason
            summary.note(reason, f"item {item!r}" + (f" ({refused[item]})" if reason == "unsafe_media" else ""))
    kept = []
    for pair in pairs:
        reason = reasons[pair.item]
        if reason is None:
            kept.append(pair)
        else:
            summary.rows_skipped[reason] += 1
    return kept


def _item_problem(item: str, titles: dict[str, str], media: dict[str, Path], refused: dict[str, str]) -> str | None:
    if not titles.get(item):
        return "no_title"
    if item not in media:
        return "unsafe_media" if item in refused else "no_media"
    return None


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _min_interactions(pairs: list[Pair], minimum: int, summary: ImportSummary) -> list[Pair]:
    counts = Counter(p.user for p in pairs)
    return _drop_rows(pairs, lambda p: counts[p.user] < minimum, "user_below_min_interactions", summary)


def _sample_users(
    pairs: list[Pair], max_users: int | None, rng: np.random.Generator, summary: ImportSummary
) -> list[Pair]:
    users = sorted({p.user for p in pairs})
    if max_users is None or len(users) <= max_users:
        return pairs
    kept = set(rng.choice(users, size=max_users, replace=False).tolist())
    return _drop_rows(pairs, lambda p: p.user not in kept, "user_not_sampled", summary)


# --- audio ----------------------------------------------------------------------------------

def _materialise_audio(
    items: list[str],
    media: dict[str, Path],
    out: Path,
    config: MicroLensImportConfig,
    fates: dict[str, str],
    summary: ImportSummary,
) -> dict[str, str]:
    """Copy or extract each item's audio into ``out/audio``; ``item -> relative path`` for successes."""
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        results = list(pool.map(lambda item: _audio_for(item, media[item], out, config), items))
    audio = {}
    for item, (relative, error) in zip(items, results):
        if relative is None:
            fates[item] = "audio_failed"
            summary.note("audio_failed", f"item {item!r}: {error}")
            continue
        audio[item] = relative
        if _is_video(media[item]):
            summary.audio_extracted += 1
        else:
            summary.audio_copied += 1
    return audio


def _audio_for(item: str, source: Path, out: Path, config: MicroLensImportConfig) -> tuple[str | None, str]:
    """(relative audio path, "") on success, (None, why) on failure."""
    try:
        if source.stat().st_size == 0:
            return None, f"{source.name} is empty"
        if not _is_video(source):
            relative = f"{AUDIO_DIR}/{item}{source.suffix.lower()}"
            shutil.copyfile(source, out / relative)
            return relative, ""
    except OSError as exc:
        return None, f"cannot copy {source.name}: {exc}"
    relative = f"{AUDIO_DIR}/{item}.wav"
    error = extract_audio(source, out / relative, config.sample_rate, config.audio_clip_seconds)
    return (None, error) if error else (relative, "")


def extract_audio(video: Path, wav: Path, sample_rate: int, clip_seconds: float | None) -> str:
    """Extract a mono PCM WAV soundtrack with ffmpeg; returns "" on success or the reason it failed."""
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-vn", "-ac", "1"]
    command += ["-ar", str(sample_rate), "-c:a", "pcm_s16le"]
    if clip_seconds is not None:
        command += ["-t", str(clip_seconds)]
    try:
        result = subprocess.run(
            command + [str(wav)], capture_output=True, text=True, check=False, timeout=FFMPEG_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        wav.unlink(missing_ok=True)
        return f"ffmpeg took longer than {FFMPEG_TIMEOUT_S} s on {video.name}"
    if result.returncode == 0 and wav.is_file() and wav.stat().st_size > 44:  # 44 bytes = WAV header alone
        return ""
    wav.unlink(missing_ok=True)
    lines = result.stderr.strip().splitlines()
    return f"ffmpeg failed on {video.name}: {lines[-1] if lines else 'no audio written'}"


# --- negatives and output -------------------------------------------------------------------

def sample_negatives(
    pairs: list[Pair], catalogue: list[str], ratio: float, seed: int, summary: ImportSummary
) -> list[Pair]:
    """Seeded negatives per user from items the user never interacted with (see module docstring)."""
    rng = np.random.default_rng([seed, 1])
    index = {item: i for i, item in enumerate(catalogue)}
    by_user: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_user[pair.user].append(pair)
    negatives = []
    for user in sorted(by_user):
        positives = sorted(by_user[user], key=lambda p: (p.timestamp, p.item))
        wanted = int(ratio * len(positives) + 0.5)
        seen = {index[p.item] for p in positives}
        count = min(wanted, len(catalogue) - len(seen))
        summary.negatives_short += wanted - count
        for k, item_index in enumerate(_draw(rng, len(catalogue), seen, count)):
            negatives.append(Pair(user, catalogue[item_index], positives[k % len(positives)].timestamp))
    return negatives


def _draw(rng: np.random.Generator, size: int, exclude: set[int], count: int) -> list[int]:
    """``count`` distinct indices in ``range(size)`` outside ``exclude``, in draw order."""
    if 2 * (len(exclude) + count) > size:  # dense: enumerate the candidates
        candidates = np.array([i for i in range(size) if i not in exclude], dtype=np.int64)
        return rng.choice(candidates, size=count, replace=False).tolist()
    chosen: dict[int, None] = {}  # sparse: rejection sampling, cheap for large catalogues
    while len(chosen) < count:
        for i in rng.integers(0, size, size=count - len(chosen)).tolist():
            if i not in exclude:
                chosen.setdefault(i)
    return list(chosen)


def _items(catalogue: list[str], titles: dict[str, str], tags: dict[str, str], audio: dict[str, str]) -> pa.Table:
    return items_table(
        catalogue,
        [titles[i] for i in catalogue],
        [tags.get(i, "") for i in catalogue],
        [audio[i] for i in catalogue],
    )


def _interactions(positives: list[Pair], negatives: list[Pair]) -> pa.Table:
    """Rows ordered by user, then time, positive before its paired negatives."""
    rows = [(p, 1) for p in positives] + [(n, 0) for n in negatives]
    rows.sort(key=lambda row: (row[0].user, row[0].timestamp, -row[1], row[0].item))
    return interactions_table(
        [p.user for p, _ in rows],
        [p.item for p, _ in rows],
        [label for _, label in rows],
        [p.timestamp for p, _ in rows],
    )
