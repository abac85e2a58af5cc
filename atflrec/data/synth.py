"""``atflrec data synth``: the built-in benchmark, a seeded synthetic music catalogue in format v1.

No public dataset with users, item text and item audio can be downloaded here, so this module
makes one whose ground truth is known. Every item has hidden attributes; its audio is synthesised
from all of them, its title and tags reveal only some; users like items by a documented noisy
function of the attributes. Nothing here is tuned to make a model look good: the knobs in
:class:`SynthConfig` set how much each modality reveals, their values are recorded, and the
defaults were chosen by ``bench/history_signal.py`` (what an oracle can reach), never by a model's score.

Generator version 2 gives the like function the structure of real instruction data (a strong
per-user like propensity, a moderate item appeal, a weak personal taste). Its terms draw from
random streams of their own, so :meth:`SynthConfig.version_1` (every v2 term at 0) writes version
1's files byte for byte.

Hidden item attributes (``hidden/attributes.parquet``)
    ``genre`` (one of :data:`STYLES`' names, uniform), ``tempo_bpm`` (normal around the genre's
    centre, sd 18, clipped to 60-180), ``mode`` (major or minor, 50/50, independent of genre),
    ``energy`` (normal around the genre's centre, sd 0.18, clipped to 0-1), ``quality`` (standard
    normal; never named, it also sets popularity), ``key_midi`` (root note, random), ``acoustic``
    (the genre is one of :data:`ACOUSTIC_GENRES`), ``genre_appeal`` (the genre's population appeal)
    and ``defect`` = audible_quality * sigmoid(-1.5 * (quality + N(0, 1))): how much of the quality
    is heard.
Audio (``audio/<item_id>.wav``: mono PCM_16, ``sample_rate``, ``clip_seconds``)
    genre sets the timbre (harmonic profiles of melody and chord voices, note envelopes, vibrato),
    the spectral envelope (low-pass corner and resonance) and the percussion pattern (kick, snare,
    hi-hat on a 16-step bar, or none); tempo sets the beat, hence note and drum rates; mode sets
    the scale of the melody and the chords (a progression starting on the tonic); energy sets
    loudness (-32 to -12 dBFS RMS), brightness (the low-pass corner moves +-1 octave), drum level
    and noise. Key, chord progression, melody (a random walk on the scale, with rests) and drum
    velocities are random per item, so no two clips are alike. A clip with ``defect`` > 0 gets mains
    hum, hiss and hard clipping in proportion to it, at its own loudness.
Text (``items.parquet``)
    Tags hold one genre name: the true one with probability ``tag_genre_rate``, otherwise a
    uniformly drawn wrong one; plus 0-2 tags that mean nothing (``single``, ``remastered``, ...).
    With probability ``tag_attribute_rate`` each, a truthful tag for mode (``major key`` /
    ``minor key``), tempo (``slow`` < 100 BPM <= ``mid-tempo`` < 140 <= ``fast``) and energy
    (``calm`` / ``energetic``, split at 0.5) is added (0 keeps them audio-only).
    Titles are "adjective noun [suffix]" from neutral word lists; with probability
    ``title_genre_rate`` the noun is one of the true genre's words (``Nocturne``, ``Circuit``...).
Users (``hidden/users.parquet``)
    ``affinity_<genre>`` ~ N(0, 1) per genre; ``mode_pref``, ``tempo_pref``, ``energy_pref`` ~
    U(-1, 1) (positive: likes major / fast / energetic); ``like_bias`` b_user ~ N(0, 1) (the
    propensity to like anything) and ``taste`` s_user ~ N(0, 1) (+ likes acoustic genres, - electric).
Interactions (``interactions.parquet``)
    Each user sees k ~ U{interactions_per_user} distinct items (capped at the catalogue size),
    drawn without replacement with weights exp(popularity_skew * quality), so better items are seen
    more often (a long tail); each user starts at a random time within 180 days of a fixed epoch
    and timestamps increase (gaps: 1 s + exponential with a 2-day mean).
    The label is Bernoulli(sigmoid(z)) with the like function

        z = bias + user_bias * b_user + genre_appeal * a[genre_i] + energy_appeal * E_i
            + taste_shared * s_user * A_i + genre * affinity[user, genre_i] + mode * mode_pref * M_i
            + tempo * tempo_pref * T_i + energy * energy_pref * E_i + quality * quality_i
            + noise * xi,                                              xi ~ N(0, 1)

    where M_i = +1 (major) / -1 (minor), T_i = clip((tempo_bpm - 120) / 40, -1.5, 1.5),
    E_i = 2 * energy - 1, A_i = +1 acoustic / -1 electric genre and a[genre] ~ N(0, 1) per genre
    (:func:`item_terms`); the weights are ``SynthConfig.like``. ``hidden/likes.parquet`` holds the
    noise-free z of each interaction (an oracle score: its AUC bounds what any model can reach).

No model, feature stage or evaluation input reads ``hidden/``: it is ground truth for tests and
analysis only. The same config (seed included) writes byte-identical files.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from pydantic import Field, field_validator

from atflrec.config import StrictModel
from atflrec.data.format import METADATA_FILE, interactions_table, items_table, write_dataset
from atflrec.errors import UserError

GENERATOR = "atflrec data synth"
GENERATOR_VERSION = 2  # bump whenever the same config would produce different files
AUDIO_DIR = "audio"
HIDDEN_DIR = "hidden"
ATTRIBUTES_FILE = f"{HIDDEN_DIR}/attributes.parquet"
USERS_FILE = f"{HIDDEN_DIR}/users.parquet"
LIKES_FILE = f"{HIDDEN_DIR}/likes.parquet"

TEMPO_CENTRE_BPM = 120.0
TEMPO_SCALE_BPM = 40.0
TEMPO_SD_BPM = 18.0
TEMPO_RANGE_BPM = (60.0, 180.0)
ENERGY_SD = 0.18
KEY_RANGE_MIDI = (45, 57)  # A2 up to G#3: chords sit at 110-400 Hz, the melody an octave higher
BASE_TIMESTAMP = 1_600_000_000  # 2020-09-13; a fixed epoch keeps runs identical
DAY_S = 86_400
LIKE_FORMULA = (
    "label ~ Bernoulli(sigmoid(z)); z = bias + user_bias*b_user + genre_appeal*a[genre_i] "
    "+ energy_appeal*E_i + taste_shared*s_user*A_i + genre*affinity[user, genre_i] + mode*mode_pref*M_i "
    "+ tempo*tempo_pref*T_i + energy*energy_pref*E_i + quality*quality_i + noise*xi; "
    "M_i = +1 major / -1 minor; T_i = clip((tempo_bpm - 120)/40, -1.5, 1.5); E_i = 2*energy - 1; "
    "A_i = +1 acoustic / -1 electric genre; b_user, s_user, a[genre] ~ N(0,1); "
    "affinity ~ N(0,1); mode_pref, tempo_pref, energy_pref ~ U(-1,1); quality ~ N(0,1); xi ~ N(0,1)"
)

# Random streams: each part of the output draws from its own, so they never shift one another.
# Version 2's terms draw from streams of their own, so a v1 config still writes v1's files.
STREAM_ITEMS, STREAM_TEXT, STREAM_USERS, STREAM_INTERACTIONS, STREAM_AUDIO = range(5)
STREAM_V2_WORLD, STREAM_V2_USERS, STREAM_V2_ITEMS, STREAM_V2_DEFECTS = range(5, 9)

ACOUSTIC_GENRES = frozenset({"jazz", "classical", "folk", "latin"})  # the rest are electric: A_i = -1
HUM_HZ = 50.0  # mains hum of a low-quality recording (with its 2nd and 3rd harmonics)

SCALES = {"major": np.array([0, 2, 4, 5, 7, 9, 11]), "minor": np.array([0, 2, 3, 5, 7, 8, 10])}
PROGRESSIONS = np.array([[0, 4, 5, 3], [0, 3, 4, 0], [0, 5, 3, 4], [0, 3, 0, 4]])  # scale degrees
TABLE_BITS = 11
TABLE_SIZE = 2**TABLE_BITS
PHASE_SHIFT = 32 - TABLE_BITS
BASS_HARMONICS = (1.0, 0.3)
VIBRATO_HZ = 5.5


@dataclass(frozen=True)
class Style:
    """How one genre sounds and which title words it owns. Drum patterns have 16 steps per bar:
    ``x`` an accented hit, ``o`` a soft one, ``.`` none."""

    name: str
    tempo_bpm: float  # centre of the genre's tempo distribution
    energy: float  # centre of the genre's energy distribution
    lead: tuple[float, ...]  # harmonic amplitudes of the melody voice
    pad: tuple[float, ...]  # harmonic amplitudes of the three chord voices
    lead_attack_s: float
    lead_decay_s: float
    notes_per_beat: float
    pad_level: float
    bass_level: float
    vibrato: float  # relative depth of a VIBRATO_HZ pitch modulation
    kick: str
    snare: str
    hat: str
    cutoff_hz: float  # low-pass corner of the genre's spectral envelope (at energy 0.5)
    resonance_hz: float  # centre of a resonant boost, the instrument "body"
    title_words: tuple[str, ...]


NO_DRUMS = "." * 16
STYLES: tuple[Style, ...] = (
    Style("rock", 125, 0.7, (1, .5, .33, .25, .2, .17, .14, .12), (1, .5, .33, .25, .2), .005, .3, 2, .8, .6, 0,
          "x.......x.x.....", "....x.......x...", "x.o.x.o.x.o.x.o.", 5000, 1200,
          ("Riot", "Thunder", "Highway", "Amplifier")),
    Style("electronic", 128, 0.7, (1, 0, .33, 0, .2, 0, .14), (1, .5, .33, .25), .002, .1, 4, .6, 1.0, 0,
          "x...x...x...x...", "....x.......x...", "..x...x...x...x.", 7000, 300,
          ("Circuit", "Pulse", "Neon", "Voltage")),
    Style("jazz", 140, 0.45, (1, .5, .25, .12, .06), (1, .3, .1), .02, .4, 2, .7, .5, .004,
          "x.........o.....", "......o.......o.", "x..ox..ox..ox..o", 3000, 700,
          ("Swing", "Bebop", "Blues", "Saxophone")),
    Style("classical", 100, 0.35, (1, .6, .4, .3, .2, .1), (1, .5, .3, .2), .08, 1.5, 1, 1.0, .3, .006,
          NO_DRUMS, NO_DRUMS, NO_DRUMS, 3500, 500,
          ("Nocturne", "Sonata", "Etude", "Prelude")),
    Style("hiphop", 90, 0.6, (1, .15, .05), (1, .2), .005, .5, 1, .5, 1.2, 0,
          "x......x..x.....", "....x.......x...", "oooooooooooooooo", 4000, 90,
          ("Cipher", "Hustle", "Block", "Freestyle")),
    Style("folk", 105, 0.4, (1, .7, .5, .35, .25, .18, .12, .08), (1, .4), .002, .25, 2, .3, .3, 0,
          "x...............", NO_DRUMS, "o.o.o.o.o.o.o.o.", 6000, 2500,
          ("Ballad", "Meadow", "Fiddle", "Hollow")),
    Style("ambient", 75, 0.2, (1, .1), (1, .5, .3), .3, 2.0, .5, 1.4, .2, .002,
          NO_DRUMS, NO_DRUMS, NO_DRUMS, 1500, 400,
          ("Drift", "Haze", "Stillness", "Horizon")),
    Style("latin", 110, 0.6, (1, 0, 0, .35), (1, .3), .002, .12, 4, .4, .6, 0,
          "x..x..x.x..x..x.", "x..x...x..x.x...", "x.x.x.x.x.x.x.x.", 5500, 1800,
          ("Salsa", "Rumba", "Fiesta", "Mambo")),
)

ADJECTIVES = ("Silver", "Quiet", "Broken", "Golden", "Lost", "Hidden", "Paper", "Falling", "Distant", "Little",
              "Wild", "Empty", "Secret", "Summer", "Winter", "Crimson", "Late", "Northern", "Open", "Gentle")
NOUNS = ("River", "Window", "Letter", "Garden", "Mirror", "Train", "Morning", "Shadow", "Station", "Harbor",
         "Island", "Candle", "Feather", "Road", "Echo", "Story", "Promise", "Avenue", "Lantern", "Compass")
SUFFIXES = ("Again", "at Dawn", "for Two", "in the Rain", "Revisited", "Part II", "Tonight", "of Glass")
FILLER_TAGS = ("single", "remastered", "live", "b-side", "radio edit", "demo", "cover", "favorites")


class LikeWeights(StrictModel):
    """Weights of the like function (see the module docstring for the formula); chosen by
    ``bench/history_signal.py`` (what an oracle can reach), never by how a model scores."""

    bias: float = Field(-0.5, description="constant added to every logit; shifts the overall like rate")
    user_bias: float = Field(1.6, ge=0, description="weight of the user's like propensity b_user ~ N(0,1)")
    genre_appeal: float = Field(1.2, ge=0, description="weight of the population's liking of the item's genre")
    energy_appeal: float = Field(1.0, ge=0, description="weight of the population's liking of energy (2 * energy - 1)")
    taste_shared: float = Field(
        0.8, ge=0, description="weight of s_user * (+1 acoustic / -1 electric genre): one taste axis users share")
    genre: float = Field(1.4, ge=0, description="weight of the user's own affinity for the item's genre")
    mode: float = Field(0.5, ge=0, description="weight of mode_pref * (+1 major / -1 minor)")
    tempo: float = Field(1.2, ge=0, description="weight of tempo_pref * standardised tempo")
    energy: float = Field(1.8, ge=0, description="weight of energy_pref * (2 * energy - 1)")
    quality: float = Field(0.6, ge=0, description="weight of the item's quality (also its popularity)")
    noise: float = Field(0.5, ge=0, description="standard deviation of the Gaussian noise added to the logit")


# Generator version 1's defaults: with these (every v2 term at 0) version 2 writes v1's files.
V1_LIKE = {"bias": 0.0, "user_bias": 0.0, "genre_appeal": 0.0, "energy_appeal": 0.0, "taste_shared": 0.0,
           "genre": 1.0, "mode": 0.8, "tempo": 0.8, "energy": 0.8, "quality": 0.5, "noise": 1.0}
V1_SETTINGS = {"tag_attribute_rate": 0.0, "audible_quality": 0.0, "like": V1_LIKE}


class SynthConfig(StrictModel):
    """Settings of the built-in benchmark generator; the defaults fit a 2-core laptop demo."""

    users: int = Field(300, ge=1, description="number of users")
    items: int = Field(480, ge=1, description="number of items (one audio clip each; time and disk scale linearly)")
    seed: int = Field(0, ge=0, description="seed of every random draw; the same config writes identical files")
    clip_seconds: float = Field(4.0, ge=0.1, le=60, description="length of each audio clip in seconds")
    sample_rate: int = Field(16000, ge=8000, le=48000, description="audio sample rate in Hz")
    genres: int = Field(
        6, ge=2, le=len(STYLES), description=f"how many of the genres {[s.name for s in STYLES]} to use, in order")
    tag_genre_rate: float = Field(
        0.6, ge=0, le=1, description="probability that an item's genre tag is its true genre (else a random wrong one)")
    title_genre_rate: float = Field(
        0.25, ge=0, le=1, description="probability that the title holds one of the true genre's words")
    tag_attribute_rate: float = Field(
        0.25, ge=0, le=1, description="probability of each truthful mode / tempo / energy tag (0: audio only)")
    audible_quality: float = Field(
        0.5, ge=0, le=1,
        description="how strongly low quality is rendered into the clip (hiss, hum, clipping); 0: never heard")
    interactions_per_user: tuple[int, int] = Field(
        (20, 40), description="inclusive [min, max] items each user sees (capped at items)")
    popularity_skew: float = Field(
        1.0, ge=0, le=5, description="exposure weight is exp(skew * quality); 0 = uniform exposure")
    like: LikeWeights = Field(default_factory=LikeWeights, description="weights of the like function")

    @field_validator("interactions_per_user")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if low < 1 or high < low:
            raise ValueError(f"must be [min, max] with 1 <= min <= max, got {list(value)}")
        return value

    def styles(self) -> tuple[Style, ...]:
        return STYLES[: self.genres]

    @classmethod
    def version_1(cls, **settings: Any) -> SynthConfig:
        """Generator version 1's world (no v2 terms), with ``settings`` on top: the same files v1 wrote."""
        return cls.model_validate({**V1_SETTINGS, **settings})


class Items(NamedTuple):
    """Hidden item attributes, one array entry per item (``genre_appeal``: one per genre)."""

    genre: np.ndarray  # int index into the config's styles
    tempo_bpm: np.ndarray
    major: np.ndarray  # bool
    energy: np.ndarray
    quality: np.ndarray
    key_midi: np.ndarray
    defect: np.ndarray  # 0..audible_quality: how much hiss, hum and clipping the clip gets
    genre_appeal: np.ndarray  # [genres] population-level liking a[genre] ~ N(0, 1)


class Users(NamedTuple):
    """Hidden user preferences, one row per user."""

    affinity: np.ndarray  # [users, genres]
    mode_pref: np.ndarray
    tempo_pref: np.ndarray
    energy_pref: np.ndarray
    like_bias: np.ndarray  # b_user ~ N(0, 1)
    taste: np.ndarray  # s_user ~ N(0, 1): + likes acoustic genres, - electric ones


class ItemTerms(NamedTuple):
    """The item attributes as the like function uses them (one entry per item)."""

    mode: np.ndarray  # M: +1 major / -1 minor
    tempo: np.ndarray  # T: standardised, clipped tempo
    energy: np.ndarray  # E: 2 * energy - 1
    acoustic: np.ndarray  # A: +1 acoustic / -1 electric genre


class Interactions(NamedTuple):
    """All interactions, grouped by user in time order; user and item are indices."""

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    logit: np.ndarray  # noise-free z
    label: np.ndarray


@dataclass
class SynthSummary:
    """What :func:`generate` wrote."""

    out: Path
    users: int
    items: int
    interactions: int
    likes: int
    genre_counts: dict[str, int]
    tag_genre_agreement: float
    audio_seconds: float
    generator_version: int = GENERATOR_VERSION
    like_function: str = LIKE_FORMULA
    hidden_files: list[str] = field(default_factory=lambda: [ATTRIBUTES_FILE, USERS_FILE, LIKES_FILE])

    @property
    def like_rate(self) -> float:
        return self.likes / self.interactions if self.interactions else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counts, for dataset.json."""
        counts = {k: v for k, v in asdict(self).items() if k not in ("out", "like_function")}
        return counts | {"like_rate": self.like_rate}

    def describe(self) -> str:
        genres = ", ".join(f"{name} {count}" for name, count in self.genre_counts.items())
        return "\n".join([
            f"wrote the synthetic benchmark (generator v{self.generator_version}) to {self.out}",
            f"  items: {self.items} ({genres}); audio: {self.audio_seconds:.0f} s in {AUDIO_DIR}/",
            f"  users: {self.users}; interactions: {self.interactions}, {self.likes} liked ({self.like_rate:.1%})",
            f"  genre tags that name the true genre: {self.tag_genre_agreement:.1%}",
            f"  hidden ground truth (read by no model): {', '.join(self.hidden_files)}",
        ])


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


# --- hidden attributes and users ---------------------------------------------------------------

def draw_items(config: SynthConfig) -> Items:
    """The hidden attributes of every item."""
    rng = _rng(config.seed, STREAM_ITEMS)
    styles = config.styles()
    n = config.items
    genre = rng.integers(0, len(styles), n)
    tempo_centre = np.array([s.tempo_bpm for s in styles])[genre]
    energy_centre = np.array([s.energy for s in styles])[genre]
    tempo_bpm = np.clip(rng.normal(tempo_centre, TEMPO_SD_BPM), *TEMPO_RANGE_BPM)
    major = rng.random(n) < 0.5
    energy = np.clip(rng.normal(energy_centre, ENERGY_SD), 0.0, 1.0)
    quality = rng.standard_normal(n)
    key_midi = rng.integers(*KEY_RANGE_MIDI, n)
    # What the ear hears of quality is the quality seen through a unit of noise: part of it, not all.
    heard = quality + _rng(config.seed, STREAM_V2_ITEMS).standard_normal(n)
    return Items(
        genre=genre, tempo_bpm=tempo_bpm, major=major, energy=energy, quality=quality, key_midi=key_midi,
        defect=config.audible_quality / (1 + np.exp(1.5 * heard)),
        genre_appeal=_rng(config.seed, STREAM_V2_WORLD).standard_normal(len(styles)),
    )


def draw_users(config: SynthConfig) -> Users:
    """The hidden preferences of every user."""
    rng = _rng(config.seed, STREAM_USERS)
    n = config.users
    affinity, mode_pref = rng.standard_normal((n, config.genres)), rng.uniform(-1, 1, n)
    tempo_pref, energy_pref = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    v2 = _rng(config.seed, STREAM_V2_USERS)
    return Users(affinity=affinity, mode_pref=mode_pref, tempo_pref=tempo_pref, energy_pref=energy_pref,
                 like_bias=v2.standard_normal(n), taste=v2.standard_normal(n))


def item_terms(config: SynthConfig, items: Items) -> ItemTerms:
    """M, T, E and A of every item, as the like function (and any analysis of it) uses them."""
    acoustic = np.array([1.0 if s.name in ACOUSTIC_GENRES else -1.0 for s in config.styles()])
    return ItemTerms(
        mode=np.where(items.major, 1.0, -1.0),
        tempo=np.clip((items.tempo_bpm - TEMPO_CENTRE_BPM) / TEMPO_SCALE_BPM, -1.5, 1.5),
        energy=2 * items.energy - 1,
        acoustic=acoustic[items.genre],
    )


def like_logit(config: SynthConfig, items: Items, users: Users, user: np.ndarray, item: np.ndarray) -> np.ndarray:
    """The noise-free z of the like function for each (user, item) pair."""
    w, terms = config.like, item_terms(config, items)
    genre = items.genre[item]
    return (
        w.bias
        + w.user_bias * users.like_bias[user]
        + w.genre_appeal * items.genre_appeal[genre]
        + w.energy_appeal * terms.energy[item]
        + w.taste_shared * users.taste[user] * terms.acoustic[item]
        + w.genre * users.affinity[user, genre]
        + w.mode * users.mode_pref[user] * terms.mode[item]
        + w.tempo * users.tempo_pref[user] * terms.tempo[item]
        + w.energy * users.energy_pref[user] * terms.energy[item]
        + w.quality * items.quality[item]
    )


def draw_interactions(config: SynthConfig, items: Items, users: Users) -> Interactions:
    """Who saw what and when (popularity-weighted exposure), labelled by the like function."""
    rng = _rng(config.seed, STREAM_INTERACTIONS)
    low, high = (min(v, config.items) for v in config.interactions_per_user)
    exposure = np.exp(config.popularity_skew * (items.quality - items.quality.max()))
    exposure /= exposure.sum()
    counts = rng.integers(low, high + 1, config.users)
    user = np.repeat(np.arange(config.users), counts)
    item = np.concatenate([rng.choice(config.items, size=k, replace=False, p=exposure) for k in counts])
    starts = BASE_TIMESTAMP + rng.integers(0, 180 * DAY_S, config.users)
    gaps = 1 + rng.exponential(2 * DAY_S, user.size).astype(np.int64)
    first = np.r_[0, np.cumsum(counts)[:-1]]  # index of each user's first interaction
    cumulative = np.cumsum(gaps)
    timestamp = starts[user] + cumulative - cumulative[first][user]
    logit = like_logit(config, items, users, user, item)
    noisy = logit + config.like.noise * rng.standard_normal(user.size)
    label = (rng.random(user.size) < 1 / (1 + np.exp(-noisy))).astype(np.int8)
    return Interactions(user, item, timestamp.astype(np.int64), logit, label)


# --- text --------------------------------------------------------------------------------------

def _make_titles(config: SynthConfig, items: Items, rng: np.random.Generator) -> list[str]:
    styles = config.styles()
    titles = []
    for genre in items.genre:
        noun = rng.choice(styles[genre].title_words) if rng.random() < config.title_genre_rate else rng.choice(NOUNS)
        suffix = f" {rng.choice(SUFFIXES)}" if rng.random() < 0.5 else ""
        titles.append(f"{rng.choice(ADJECTIVES)} {noun}{suffix}")
    return titles


def _attribute_tags(items: Items, i: int) -> list[str]:
    """Truthful mode, tempo and energy tags of item ``i``."""
    tempo = items.tempo_bpm[i]
    return [
        "major key" if items.major[i] else "minor key",
        "slow" if tempo < 100 else "mid-tempo" if tempo < 140 else "fast",
        "energetic" if items.energy[i] >= 0.5 else "calm",
    ]


def _make_tags(config: SynthConfig, items: Items, rng: np.random.Generator) -> list[list[str]]:
    names = [s.name for s in config.styles()]
    tags = []
    for i, genre in enumerate(items.genre):
        if rng.random() >= config.tag_genre_rate:
            genre = (genre + rng.integers(1, len(names))) % len(names)  # uniform over the wrong genres
        chosen = [names[genre], *rng.choice(FILLER_TAGS, size=rng.integers(0, 3), replace=False)]
        chosen += [tag for tag in _attribute_tags(items, i) if rng.random() < config.tag_attribute_rate]
        tags.append([str(t) for t in rng.permutation(chosen)])
    return tags


# --- audio -------------------------------------------------------------------------------------

@cache
def _wavetable(harmonics: tuple[float, ...]) -> np.ndarray:
    phase = np.arange(TABLE_SIZE) / TABLE_SIZE
    wave = sum(a * np.sin(2 * np.pi * (k + 1) * phase) for k, a in enumerate(harmonics) if a)
    return (wave / np.abs(wave).max()).astype(np.float32)


@cache
def _drum_sounds(sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kick (falling sine), snare (noise + tone) and hi-hat (differentiated noise) one-shots."""
    rng = np.random.default_rng(0)  # fixed: the same drum kit for every item and run
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    kick_hz = 45 + 75 * np.exp(-t / 0.04)
    kick = np.sin(2 * np.pi * np.cumsum(kick_hz) / sample_rate) * np.exp(-t / 0.08)
    t = t[: int(0.18 * sample_rate)]
    snare = 0.7 * rng.standard_normal(t.size) * np.exp(-t / 0.05)
    snare += 0.5 * np.sin(2 * np.pi * 180 * t) * np.exp(-t / 0.03)
    t = t[: int(0.06 * sample_rate)]
    hat = np.diff(rng.standard_normal(t.size + 1)) * np.exp(-t / 0.015) * 0.5
    return kick, snare, hat


def _pitch_hz(key_midi: int, degrees: np.ndarray, scale: np.ndarray) -> np.ndarray:
    semitones = scale[degrees % 7] + 12 * (degrees // 7)
    return 440.0 * 2.0 ** ((key_midi + semitones - 69) / 12)


def _increments(hz: np.ndarray, sample_rate: int) -> np.ndarray:
    """Phase increments per sample of a 32-bit accumulator (2**32 is one cycle)."""
    return np.round(hz * (2.0**32 / sample_rate)).astype(np.uint32)


def _oscillator(table: np.ndarray, increments: np.ndarray) -> np.ndarray:
    """Wavetable lookup; the uint32 cumulative sum wraps around exactly once per cycle."""
    phase = np.cumsum(increments, axis=-1, dtype=np.uint32)
    return np.take(table, phase >> PHASE_SHIFT)


def _segments(n: int, segment_s: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample counts of consecutive segments of ``segment_s`` covering ``n`` samples, and their onsets."""
    per_segment = segment_s * sample_rate
    onsets = np.round(np.arange(math.ceil(n / per_segment) + 1) * per_segment).astype(np.int64)
    onsets = np.minimum(onsets, n)
    return np.diff(onsets), onsets[:-1]


def _melody(style: Style, key: int, scale: np.ndarray, n: int, beat_s: float, sr: int,
            rng: np.random.Generator) -> np.ndarray:
    """A random walk on the scale in the genre's lead timbre, every note with the same envelope."""
    lengths, onsets = _segments(n, beat_s / style.notes_per_beat, sr)
    n_notes = lengths.size
    degrees = np.clip(np.cumsum(rng.integers(-2, 3, n_notes)), -2, 9) + 7  # random walk an octave up
    playing = rng.random(n_notes) >= 0.15  # some rests
    shape_t = np.arange(lengths.max()) / sr
    shape = (1 - np.exp(-shape_t / style.lead_attack_s)) * np.exp(-shape_t / style.lead_decay_s)
    envelope = np.take(shape, np.arange(n) - np.repeat(onsets, lengths)) * np.repeat(playing, lengths)
    increments = np.repeat(_increments(_pitch_hz(key, degrees, scale), sr), lengths)
    if style.vibrato:
        vibrato = _oscillator(_wavetable((1.0,)), np.full(n, _increments(np.array(VIBRATO_HZ), sr)))
        increments = (increments * (1 + style.vibrato * vibrato)).astype(np.uint32)
    return envelope * _oscillator(_wavetable(style.lead), increments)


def _harmony(style: Style, key: int, scale: np.ndarray, n: int, beat_s: float, sr: int,
             rng: np.random.Generator) -> np.ndarray:
    """Triads of a progression that starts on the tonic, one chord per bar, plus the bass."""
    lengths, _ = _segments(n, 4 * beat_s, sr)
    roots = PROGRESSIONS[rng.integers(len(PROGRESSIONS))][np.arange(lengths.size) % 4]
    chord_hz = np.stack([_pitch_hz(key, roots + step, scale) for step in (0, 2, 4)])
    chord = _oscillator(_wavetable(style.pad), np.repeat(_increments(chord_hz, sr), lengths, axis=1)).sum(axis=0)
    bass_hz = _pitch_hz(key - 12, roots, scale)
    bass = _oscillator(_wavetable(BASS_HARMONICS), np.repeat(_increments(bass_hz, sr), lengths))
    return style.pad_level / 3 * chord + 0.5 * style.bass_level * bass


def _drums(style: Style, n: int, beat_s: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n + int(0.25 * sr))
    step_s = beat_s / 4
    for pattern, sound in zip((style.kick, style.snare, style.hat), _drum_sounds(sr)):
        for step in range(int(n / sr / step_s) + 1):
            hit = pattern[step % 16]
            if hit != ".":
                velocity = (1.0 if hit == "x" else 0.5) * rng.uniform(0.8, 1.0)
                start = round(step * step_s * sr)
                out[start:start + sound.size] += velocity * sound
    return out[:n]


def _spectral_envelope(style: Style, energy: float, n: int, sr: int) -> np.ndarray:
    """Genre low-pass (corner moved +-1 octave by energy) times a +9 dB resonance."""
    hz = np.maximum(np.fft.rfftfreq(n, 1 / sr), 1.0)
    cutoff = style.cutoff_hz * 2.0 ** (2 * (energy - 0.5))
    resonance = 1 + 1.8 * np.exp(-0.5 * (np.log2(hz / style.resonance_hz) / 0.5) ** 2)
    return resonance / np.sqrt(1 + (hz / cutoff) ** 4)


def _degrade(mix: np.ndarray, defect: float, target_rms: float, sample_rate: int,
             rng: np.random.Generator) -> np.ndarray:
    """A low-quality recording: mains hum, hiss and hard clipping, each growing with ``defect``,
    at the clip's loudness (so loudness still tells energy)."""
    t = np.arange(mix.size) / sample_rate
    hum = sum(a * np.sin(2 * np.pi * k * HUM_HZ * t) for k, a in ((1, 1.0), (2, 0.5), (3, 0.3)))
    mix = mix + target_rms * defect * (0.8 * hum + 0.5 * rng.standard_normal(mix.size))
    ceiling = (1 - 1.2 * defect) * float(np.abs(mix).max())  # defect 0.5 clips at 40 % of the peak
    mix = np.clip(mix, -ceiling, ceiling)
    return mix * target_rms / max(float(np.sqrt(np.mean(mix**2))), 1e-9)


def synthesize_clip(style: Style, tempo_bpm: float, major: bool, energy: float, key_midi: int,
                    seconds: float, sample_rate: int, rng: np.random.Generator, defect: float = 0.0,
                    defect_rng: np.random.Generator | None = None) -> np.ndarray:
    """One mono clip in [-1, 1] (float32) rendered from the hidden attributes; ``rng`` varies the music,
    ``defect`` (0..1, drawn with ``defect_rng``) degrades the recording."""
    n = round(seconds * sample_rate)
    beat_s = 60.0 / tempo_bpm
    scale = SCALES["major" if major else "minor"]
    tonal = 0.5 * _melody(style, key_midi, scale, n, beat_s, sample_rate, rng)
    tonal += _harmony(style, key_midi, scale, n, beat_s, sample_rate, rng)
    mix = tonal + (0.5 + energy) * _drums(style, n, beat_s, sample_rate, rng)
    size = 1 << (n - 1).bit_length()  # power-of-two FFT: much faster; the padding absorbs the filter's tail
    mix = np.fft.irfft(np.fft.rfft(mix, size) * _spectral_envelope(style, energy, size, sample_rate), size)[:n]
    target_rms = 10 ** ((-32 + 20 * energy) / 20)
    mix *= target_rms / max(float(np.sqrt(np.mean(mix**2))), 1e-9)
    if defect > 0:
        mix = _degrade(mix, defect, target_rms, sample_rate, defect_rng or np.random.default_rng())
    mix += target_rms * (0.01 + 0.06 * energy) * rng.standard_normal(n, dtype=np.float32)
    return np.tanh(mix).astype(np.float32)  # soft limit: loud clips saturate a little, as real masters do


def _write_audio(config: SynthConfig, items: Items, root: Path, item_ids: list[str]) -> list[str]:
    """Render and write every clip; returns the audio paths relative to ``root``."""
    (root / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    styles = config.styles()
    paths = []
    for i, item_id in enumerate(item_ids):
        clip = synthesize_clip(
            styles[items.genre[i]], float(items.tempo_bpm[i]), bool(items.major[i]), float(items.energy[i]),
            int(items.key_midi[i]), config.clip_seconds, config.sample_rate, _rng(config.seed, STREAM_AUDIO, i),
            float(items.defect[i]), _rng(config.seed, STREAM_V2_DEFECTS, i),
        )
        paths.append(f"{AUDIO_DIR}/{item_id}.wav")
        sf.write(root / paths[-1], clip, config.sample_rate, subtype="PCM_16", format="WAV")
    return paths


# --- writing -----------------------------------------------------------------------------------

def _ids(prefix: str, count: int) -> list[str]:
    width = max(4, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def _generator_of(metadata: Path) -> str | None:
    try:
        return json.loads(metadata.read_text())["generator"]["name"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


def _prepare_out(root: Path) -> None:
    """Allow an empty or missing directory, or replace an earlier synth dataset (only our files)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise UserError(f"--out {root} exists and is not a directory")
    if not any(root.iterdir()):
        return
    if _generator_of(root / METADATA_FILE) != GENERATOR:
        raise UserError(f"--out {root} is not empty and holds no synthetic dataset; choose an empty or new directory")
    for name in (AUDIO_DIR, HIDDEN_DIR):
        shutil.rmtree(root / name, ignore_errors=True)


def _write_hidden(config: SynthConfig, root: Path, item_ids: list[str], user_ids: list[str],
                  items: Items, users: Users, interactions: Interactions) -> None:
    (root / HIDDEN_DIR).mkdir(parents=True, exist_ok=True)
    names = [s.name for s in config.styles()]
    pq.write_table(pa.table({
        "item_id": item_ids,
        "genre": [names[g] for g in items.genre],
        "tempo_bpm": items.tempo_bpm,
        "mode": np.where(items.major, "major", "minor"),
        "energy": items.energy,
        "quality": items.quality,
        "key_midi": items.key_midi.astype(np.int32),
        "acoustic": item_terms(config, items).acoustic > 0,
        "genre_appeal": items.genre_appeal[items.genre],
        "defect": items.defect,
    }), root / ATTRIBUTES_FILE)
    affinity = {f"affinity_{name}": users.affinity[:, g] for g, name in enumerate(names)}
    pq.write_table(pa.table({
        "user_id": user_ids,
        **affinity,
        "top_genre": [names[g] for g in users.affinity.argmax(axis=1)],
        "mode_pref": users.mode_pref,
        "tempo_pref": users.tempo_pref,
        "energy_pref": users.energy_pref,
        "like_bias": users.like_bias,
        "taste": users.taste,
    }), root / USERS_FILE)
    pq.write_table(pa.table({
        "user_id": np.asarray(user_ids)[interactions.user],
        "item_id": np.asarray(item_ids)[interactions.item],
        "like_logit": interactions.logit,
    }), root / LIKES_FILE)


class World(NamedTuple):
    """Everything the generator draws except the audio; row ``n`` of a table is id ``*_ids[n]``."""

    items: Items
    users: Users
    interactions: Interactions
    titles: list[str]
    tags: list[list[str]]
    item_ids: list[str]
    user_ids: list[str]


def draw_world(config: SynthConfig) -> World:
    """Items, users, labelled interactions and item text: the dataset without its audio files."""
    items, users = draw_items(config), draw_users(config)
    text_rng = _rng(config.seed, STREAM_TEXT)
    titles, tags = _make_titles(config, items, text_rng), _make_tags(config, items, text_rng)
    return World(items, users, draw_interactions(config, items, users), titles, tags,
                 _ids("i", config.items), _ids("u", config.users))


def generate(config: SynthConfig, out: str | Path) -> SynthSummary:
    """Write the benchmark dataset described by ``config`` to ``out`` (format v1 plus ``hidden/``)."""
    root = Path(out)
    _prepare_out(root)
    items, users, interactions, titles, tags, item_ids, user_ids = draw_world(config)

    audio_paths = _write_audio(config, items, root, item_ids)
    _write_hidden(config, root, item_ids, user_ids, items, users, interactions)
    names = [s.name for s in config.styles()]
    summary = SynthSummary(
        out=root,
        users=config.users,
        items=config.items,
        interactions=int(interactions.label.size),
        likes=int(interactions.label.sum()),
        genre_counts={name: int((items.genre == g).sum()) for g, name in enumerate(names)},
        tag_genre_agreement=float(np.mean([names[g] in t for g, t in zip(items.genre, tags)])),
        audio_seconds=config.items * config.clip_seconds,
    )
    metadata = {
        "generator": {"name": GENERATOR, "version": GENERATOR_VERSION},
        "config": config.model_dump(mode="json"),
        "like_function": {"formula": LIKE_FORMULA, "weights": config.like.model_dump(mode="json"),
                          "genre_appeal": dict(zip(names, items.genre_appeal.round(4).tolist())),
                          "acoustic_genres": sorted(ACOUSTIC_GENRES & set(names))},
        "hidden": {"files": summary.hidden_files, "note": "ground truth for tests and analysis; no model reads it"},
        "summary": summary.as_dict(),
    }
    table = interactions_table([user_ids[u] for u in interactions.user], [item_ids[i] for i in interactions.item],
                               interactions.label.tolist(), interactions.timestamp.tolist())
    write_dataset(root, items_table(item_ids, titles, tags, audio_paths), table, metadata)
    return summary
