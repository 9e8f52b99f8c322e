"""Choosing the audio devices and their rate (with a stand-in for sounddevice): by name or
index, one clear line when nothing or several match or a device cannot do its part, a rate
both devices accept whatever the recording's, and the table of ``player devices``."""

import pytest

from player.devices import choose_devices, device_table, find_device
from shared.errors import DeviceError

from .fake_sounddevice import FakeDevice, FakeSoundDevice


def studio():
    return FakeSoundDevice(devices=[
        FakeDevice("USB Audio Interface", hostapi=0, inputs=2, outputs=2, rate=48000, rates=(44100, 48000, 96000)),
        FakeDevice("Built-in Microphone", hostapi=0, inputs=1, outputs=0, rate=44100, rates=(44100,)),
        FakeDevice("Headphones", hostapi=0, inputs=0, outputs=2, rate=48000, rates=(48000,)),
        FakeDevice("HDMI Output", hostapi=1, inputs=0, outputs=8, rate=48000, rates=(48000, 96000)),
    ], default=(1, 2))


def test_devices_by_name_index_and_default():
    sd = studio()
    assert find_device(sd, "usb", "input") == 0
    assert find_device(sd, 3, "output") == 3
    assert find_device(sd, None, "input") == 1 and find_device(sd, None, "output") == 2


@pytest.mark.parametrize("spec, kind, says", [
    ("Piano", "input", "No input device matching 'Piano'"),
    ("o", "output", "Multiple output devices"),
    ("Headphones", "input", "No input device"),
    (2, "input", "has no input channels"),
    (7, "output", "No device with index 7"),
])
def test_a_device_that_cannot_be_used_is_one_clear_line(spec, kind, says):
    with pytest.raises(DeviceError) as err:
        find_device(studio(), spec, kind)
    assert says in str(err.value) and "player devices" in str(err.value) and "\n" not in str(err.value)


def test_the_rate_is_the_devices_not_the_recordings():
    """A 44.1-kHz recording on a 48-kHz interface runs at 48 kHz."""
    choice = choose_devices(studio(), "USB", "USB", None, recording_sr=44100)
    assert (choice.input, choice.output, choice.samplerate) == (0, 0, 48000)
    assert choice.host_api == "ALSA" and choice.input_name == "USB Audio Interface"


def test_devices_with_different_defaults_meet_on_a_rate_both_accept():
    """A 44.1-kHz-only microphone with 48-kHz headphones: no common rate, said in one line;
    with the interface's output (which also takes 44.1 kHz) they meet at 44.1 kHz."""
    sd = studio()
    with pytest.raises(DeviceError) as err:
        choose_devices(sd, None, None, None, recording_sr=44100)
    message = str(err.value)
    assert "'Built-in Microphone' accepts 44100 Hz" in message and "'Headphones' accepts 48000 Hz" in message
    assert "\n" not in message
    assert choose_devices(sd, None, "USB", None, recording_sr=48000).samplerate == 44100


def test_an_asked_rate_is_used_or_refused():
    sd = studio()
    assert choose_devices(sd, "USB", "USB", 96000, recording_sr=44100).samplerate == 96000
    with pytest.raises(DeviceError) as err:
        choose_devices(sd, "USB", "USB", 22050, recording_sr=44100)
    assert "22050 Hz is not accepted" in str(err.value) and "96000 Hz" in str(err.value)


def test_the_device_table_shows_host_api_channels_and_rate():
    text = device_table(studio())
    lines = text.splitlines()
    assert "host API" in lines[0] and "default rate" in lines[0]
    usb = next(line for line in lines if "USB Audio Interface" in line)
    assert "ALSA" in usb and "48000 Hz" in usb and usb.split()[-4:-2] == ["2", "2"]
    hdmi = next(line for line in lines if "HDMI" in line)
    assert "JACK Audio Connection Kit" in hdmi and hdmi.split()[-4:-2] == ["0", "8"]
    assert next(line for line in lines if "Built-in" in line).startswith(">")
    assert next(line for line in lines if "Headphones" in line).startswith(" <")
