"""Audio devices through PortAudio: finding them by name or index, the rate they run at,
and the table of ``player devices``.

Everything here takes the ``sounddevice`` module as its first argument (imported only when
live audio is asked for, see :func:`player.live.import_sounddevice`), so tests can hand
it a stand-in. Every failure is a :class:`shared.errors.DeviceError` with one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import DeviceError, first_line

#: Rates tried, after the devices' own defaults, when none is asked for (Hz).
COMMON_RATES = (48000, 44100, 96000, 88200, 32000, 22050)


@dataclass(frozen=True)
class DeviceChoice:
    """The devices and the rate a live stream opens with.

    Attributes:
        input, output: PortAudio device indices.
        input_name, output_name: their names.
        samplerate: the stream's rate (Hz), accepted by both.
        host_api: the output device's host API (ALSA, JACK, PulseAudio, ...).
    """

    input: int
    output: int
    input_name: str
    output_name: str
    samplerate: int
    host_api: str


def device_table(sd) -> str:
    """One line per device: index, name, host API, input and output channels, default rate;
    ``>`` marks the default input, ``<`` the default output."""
    devices = sd.query_devices()
    apis = sd.query_hostapis()
    default_in, default_out = _defaults(sd)
    rows = [f"{'':2} {'#':>3}  {'name':<40} {'host API':<26} {'in':>3} {'out':>3}  default rate"]
    for i, d in enumerate(devices):
        mark = (">" if i == default_in else " ") + ("<" if i == default_out else " ")
        api = apis[d["hostapi"]]["name"] if 0 <= d["hostapi"] < len(apis) else "?"
        rows.append(f"{mark} {i:>3}  {d['name'][:40]:<40} {api[:26]:<26} {d['max_input_channels']:>3} "
                    f"{d['max_output_channels']:>3}  {d['default_samplerate']:.0f} Hz")
    if not devices:
        rows.append("   (no audio devices found)")
    rows.append("> default input, < default output; choose with --input-device / --output-device NAME or #")
    return "\n".join(rows)


def _defaults(sd) -> tuple[int, int]:
    default = sd.default.device
    try:
        return int(default[0]), int(default[1])
    except (TypeError, ValueError, IndexError):
        return -1, -1


def find_device(sd, spec: str | int | None, kind: str) -> int:
    """The index of the ``kind`` ("input" or "output") device named or numbered ``spec``
    (the default one for None); one line when it matches nothing, several devices or a
    device without ``kind`` channels."""
    try:
        info = sd.query_devices(spec, kind)
    except ValueError as exc:  # no device, or several, match the name
        raise DeviceError(f"{first_line(exc, 160)}; the devices are listed by 'player devices'") from None
    except sd.PortAudioError as exc:
        raise DeviceError(f"no {kind} device ({first_line(exc, 120)}); see 'player devices'") from None
    if info[f"max_{kind}_channels"] < 1:
        raise DeviceError(f"device '{info['name']}' has no {kind} channels; choose another with "
                          f"--{kind}-device (see 'player devices')")
    return int(info["index"])


def choose_devices(sd, input_spec: str | int | None, output_spec: str | int | None,
                   samplerate: int | None, recording_sr: int) -> DeviceChoice:
    """The devices for a duplex stream and a rate both accept: ``samplerate`` if given,
    else the output's default, the input's default, the common rates, the recording's.

    Raises:
        DeviceError: a device is not found or cannot do its part; no rate suits both (the
            message says which rates each accepts).
    """
    i, o = find_device(sd, input_spec, "input"), find_device(sd, output_spec, "output")
    devices = sd.query_devices()
    din, dout = devices[i], devices[o]
    apis = sd.query_hostapis()
    api = apis[dout["hostapi"]]["name"] if 0 <= dout["hostapi"] < len(apis) else "?"
    if samplerate is not None:
        candidates = [int(samplerate)]
    else:
        candidates = [int(dout["default_samplerate"]), int(din["default_samplerate"]), *COMMON_RATES, int(recording_sr)]
    candidates = list(dict.fromkeys(r for r in candidates if r > 0))
    for rate in candidates:
        if _accepts(sd, i, "input", rate) and _accepts(sd, o, "output", rate):
            return DeviceChoice(i, o, din["name"], dout["name"], rate, api)
    tried = sorted(set(candidates) | set(COMMON_RATES))
    ins = [r for r in tried if _accepts(sd, i, "input", r)]
    outs = [r for r in tried if _accepts(sd, o, "output", r)]
    asked = f"{samplerate} Hz is not accepted" if samplerate is not None else "no common rate"
    raise DeviceError(f"{asked}: input '{din['name']}' accepts {_rates(ins)}, output '{dout['name']}' accepts "
                      f"{_rates(outs)}; choose --samplerate or other devices (see 'player devices')")


def _accepts(sd, device: int, kind: str, rate: int) -> bool:
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=device, channels=1, dtype="float32", samplerate=rate)
        return True
    except (sd.PortAudioError, ValueError):
        return False


def _rates(rates: list[int]) -> str:
    return ", ".join(f"{r} Hz" for r in rates) if rates else "none of the usual rates"
