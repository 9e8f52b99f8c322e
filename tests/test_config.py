"""Settings validate themselves: every stage's config refuses a value out of its range with
a ConfigError naming the field, and EngineConfig.from_overrides builds a config from
``stage.field=value`` items, refusing unknown names."""

import dataclasses
import math

import pytest

from player.activity import ActivityConfig
from player.config import STAGE_FIELDS, EngineConfig
from player.denoise import DenoiseConfig
from player.echo import LeakConfig
from player.follower import FollowerConfig
from player.playback import PlaybackConfig
from player.relocator import RelocatorConfig
from player.search import SearchConfig
from player.separation import SeparationConfig
from prep.pipeline import BuildOptions
from shared.errors import ConfigError, KaraokeError
from shared.spectral import AnalysisParams

BAD_VALUES = [
    (FollowerConfig, "kappa", 0.0), (FollowerConfig, "substeps", 2.5), (FollowerConfig, "band_lead", 1.5),
    (FollowerConfig, "onset_hit", 0.05), (FollowerConfig, "max_tempo", 0.4),
    (SeparationConfig, "alpha", 2.5), (SeparationConfig, "alpha", math.nan), (SeparationConfig, "n_iter", 0),
    (SeparationConfig, "smooth_blocks", 1.5), (PlaybackConfig, "catch_up_s", 0.0),
    (PlaybackConfig, "max_rate", 0.4), (SearchConfig, "tempos", ()), (SearchConfig, "tempos", (1.0, -0.9)),
    (SearchConfig, "min_active", 1.2), (SearchConfig, "candidates", 0), (RelocatorConfig, "trial_max_s", 1.0),
    (RelocatorConfig, "margin_nats", math.inf), (RelocatorConfig, "trial_pace", -0.1),
    (ActivityConfig, "floor_percentile", 120.0), (ActivityConfig, "window_s", -1.0),
    (DenoiseConfig, "keep", 1.5), (DenoiseConfig, "snr_off_db", 10.0), (LeakConfig, "floor", -0.1),
    (LeakConfig, "gain_percentile", 101.0), (EngineConfig, "start_s", -1.0),
    (EngineConfig, "output_latency_s", math.nan), (EngineConfig, "tempo", 0.0), (EngineConfig, "tempo", 2.5),
    (EngineConfig, "tempo", 0.3), (EngineConfig, "tempo", math.nan), (BuildOptions, "n_components", 0),
    (AnalysisParams, "fine_hop", 0), (AnalysisParams, "n_fft", math.inf),
]


@pytest.mark.parametrize("config, field, value", BAD_VALUES,
                         ids=[f"{c.__name__}.{f}={v!r}" for c, f, v in BAD_VALUES])
def test_a_value_out_of_range_is_refused_naming_the_field(config, field, value):
    with pytest.raises(ConfigError) as err:
        config(**{field: value})
    assert isinstance(err.value, KaraokeError) and isinstance(err.value, ValueError)
    assert field in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("config", [FollowerConfig, ActivityConfig, SearchConfig, RelocatorConfig, SeparationConfig,
                                    PlaybackConfig, LeakConfig, DenoiseConfig, EngineConfig, AnalysisParams,
                                    BuildOptions])
def test_the_defaults_are_valid(config):
    config()


def test_limits_that_may_be_switched_off_accept_infinity():
    assert RelocatorConfig(home_takeover_nats=math.inf).home_takeover_nats == math.inf
    assert RelocatorConfig(note_lead_cap_nats=math.inf).note_lead_cap_nats == math.inf


def test_overrides_reach_every_stage_and_the_engine_itself():
    config = EngineConfig.from_overrides(["follower.kappa=4", "relocator.margin_nats=30", "search.tempos=[0.9,1,1.1]",
                                          "separation.alpha=1.5", "intro=true", "global_search=false"])
    assert config.follower.kappa == 4 and config.relocator.margin_nats == 30
    assert config.search.tempos == (0.9, 1, 1.1) and config.separation.alpha == 1.5
    assert config.intro is True and config.global_search is False
    # everything not named keeps its default
    assert config.playback == PlaybackConfig() and config.follower.substeps == FollowerConfig().substeps


def test_overrides_build_on_a_base_and_take_a_mapping():
    base = EngineConfig(start_s=12.0)
    config = EngineConfig.from_overrides({"separation.alpha": 0.0, "start_s": 3.5}, base=base)
    assert config.separation.alpha == 0.0 and config.start_s == 3.5 and base.start_s == 12.0


@pytest.mark.parametrize("item, says", [
    ("follower.kapa=4", "kapa"),            # a misspelt field: the known fields are listed
    ("sep.alpha=1", "sep"),                 # groups are the field names of EngineConfig
    ("kappa=4", "kappa"),                   # a stage's field needs its stage
    ("follower=4", "follower"),             # a group is not a value
    ("separation.alpha=3", "alpha"),        # the stage's own range check
    ("relocator.trial_s", "KEY=VALUE"),     # no value
])
def test_bad_overrides_are_one_clear_error(item, says):
    with pytest.raises(ConfigError) as err:
        EngineConfig.from_overrides([item])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_field_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        EngineConfig.from_overrides(["follower.kapa=4"])
    assert "kappa" in str(err.value)


def test_every_stage_field_is_its_own_config_type():
    for name in STAGE_FIELDS:
        with pytest.raises(ConfigError):
            EngineConfig(**{name: object()})
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    assert set(STAGE_FIELDS) <= fields
