"""The engine's configuration: one validated settings dataclass per stage, gathered."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from player.activity import ActivityConfig
from player.anticipate import AnticipateConfig
from player.denoise import DenoiseConfig
from player.echo import LeakConfig
from player.follower import FollowerConfig
from player.jump_prior import JumpPriorConfig
from player.playback import PlaybackConfig
from player.relocator import RelocatorConfig
from player.search import SearchConfig
from player.separation import SeparationConfig
from shared.config import check_fields, field_error, replace_fields
from shared.errors import ConfigError

#: The stages' settings, by the name of their field in :class:`EngineConfig`.
STAGE_FIELDS = ("follower", "activity", "search", "jumps", "relocator", "separation", "anticipate", "playback",
                "leak", "denoise")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine can be tuned with.

    Attributes:
        follower, activity, search, jumps, relocator, separation, anticipate, playback, leak, denoise:
            each stage's settings (see the stage's module; ``jumps``: :mod:`player.jump_prior`).
        start_s: where in X the player starts (seconds); the search still finds them elsewhere.
        global_search: look for the player elsewhere in the piece (the global search and
            the relocator: re-lock after jumps, start anywhere).
        output_latency_s: seconds from the end of an input block until the first sample of
            the block returned for it is heard (device and queue latency; 0 for files).
        intro: play X at once from the start (and from every restart) at its own tempo
            instead of waiting for the soloist's first note: a concerto's opening tutti,
            after which the soloist comes in (found like a re-entry after a rest).
        tempo: the tempo the player means to play at, against the recording's (X seconds
            per U second: 0.7 to practise at 70 %, 1 the recording's own). The follower
            starts there, its tempo estimate is pulled towards it rather than towards the
            recording's, a tutti and an introduction play at it, and the search's tempo
            hypotheses are around it; the player is still followed wherever they go.
        again_after_s: once the recording has played to the end of its music, a silence
            of the soloist this long (seconds of U) ends the run: the player waits again
            where it began (``start_s``) for the soloist's next note, as at launch, so that
            playing the piece again from the top is followed from its first note (a
            restart elsewhere is found by the search, as a start in the middle is).
            0: never (the position stays at the end).
    """

    follower: FollowerConfig = field(default_factory=FollowerConfig)
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    jumps: JumpPriorConfig = field(default_factory=JumpPriorConfig)
    relocator: RelocatorConfig = field(default_factory=RelocatorConfig)
    separation: SeparationConfig = field(default_factory=SeparationConfig)
    anticipate: AnticipateConfig = field(default_factory=AnticipateConfig)
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    leak: LeakConfig = field(default_factory=LeakConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    start_s: float = 0.0
    global_search: bool = True
    output_latency_s: float = 0.0
    intro: bool = False
    tempo: float = 1.0
    again_after_s: float = 2.0

    def __post_init__(self) -> None:
        check_fields(self, non_negative=("start_s", "output_latency_s", "again_after_s"), positive=("tempo",))
        for name in STAGE_FIELDS:
            want = _STAGE_TYPES[name]
            if not isinstance(getattr(self, name), want):
                raise field_error(self, name, getattr(self, name), f"a {want.__name__}")
        lo, hi = self.follower.min_tempo, self.follower.max_tempo
        if not lo <= self.tempo <= hi:
            raise field_error(self, "tempo", self.tempo, f"between {lo:g} and {hi:g} (the follower's tempo range)")

    @classmethod
    def from_overrides(cls, overrides: Iterable[str] | Mapping[str, object], base: EngineConfig | None = None
                       ) -> EngineConfig:
        """``base`` (default settings if None) with ``overrides`` applied.

        Args:
            overrides: ``"stage.field=value"`` items (``stage`` one of :data:`STAGE_FIELDS`,
                e.g. ``follower.kappa=4``, ``relocator.margin_nats=30``,
                ``search.tempos=[0.9,1,1.1]``) or ``"field=value"`` for the engine's own
                fields (``intro=true``); or a mapping of the same keys to values. Values
                are JSON (lists become tuples) or plain text.

        Raises:
            ConfigError: an unknown stage or field, or a value out of its range.
        """
        items = overrides.items() if isinstance(overrides, Mapping) else (_split(item) for item in overrides)
        grouped: dict[str, dict[str, object]] = {}
        for key, value in items:
            stage, _, name = key.rpartition(".")
            if stage and stage not in STAGE_FIELDS:
                raise ConfigError(f"unknown settings group {stage!r} in {key!r} (groups: {', '.join(STAGE_FIELDS)})")
            if not stage and name in STAGE_FIELDS:
                raise ConfigError(f"{key!r} names a group; set one of its fields: {name}.FIELD=VALUE")
            grouped.setdefault(stage, {})[name] = value
        config = base or cls()
        stages = {stage: replace_fields(getattr(config, stage), values)
                  for stage, values in grouped.items() if stage}
        return replace_fields(config, {**grouped.get("", {}), **stages})


_STAGE_TYPES = {f.name: f.default_factory for f in dataclasses.fields(EngineConfig) if f.name in STAGE_FIELDS}


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"an override is KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()
