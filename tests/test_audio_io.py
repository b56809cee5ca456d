"""Sound in and out: resampling, reading files, sources, sinks and the virtual clocked devices."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf

from audio_io import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    ArraySource,
    AudioError,
    FileSource,
    MemorySink,
    MicrophoneSource,
    SpeakerSink,
    VirtualClock,
    VirtualMicrophone,
    VirtualSpeaker,
    WavSink,
    read_audio,
    stereo_recording,
    to_mono_16k,
)


def sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


# --- resampling ----------------------------------------------------------------------------


def test_48k_stereo_becomes_16k_mono_with_the_same_pitch():
    left = sine(440.0, 1.0, 48_000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    out = to_mono_16k(stereo, 48_000)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.ndim == 1
    assert len(out) == SAMPLE_RATE
    assert abs(peak_hz(out) - 440.0) < 2.0
    # Mixed by mean: one silent channel halves the level (away from the resampler's edges).
    assert np.max(np.abs(out[1000:-1000])) == pytest.approx(0.25, abs=0.01)


def test_int16_is_scaled_to_unit_range():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    out = to_mono_16k(pcm, SAMPLE_RATE)
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768], rtol=1e-6)
    # int16 at another rate: same pitch and level as its float twin.
    tone = sine(1000.0, 0.5, 22_050)
    from_int = to_mono_16k((tone * 32767).astype(np.int16), 22_050)
    np.testing.assert_allclose(from_int, to_mono_16k(tone, 22_050), atol=1e-3)


def test_bad_samples_raise_clear_errors():
    with pytest.raises(AudioError, match="NaN"):
        to_mono_16k(np.array([0.0, np.nan, 0.1], np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="NaN or infinite"):
        to_mono_16k(np.array([[0.0, np.inf]], np.float32), 48_000)
    with pytest.raises(AudioError, match="positive"):
        to_mono_16k(np.zeros(10, np.float32), 0)
    with pytest.raises(AudioError, match=r"\(samples, channels\)"):
        to_mono_16k(np.zeros((2, 3, 4), np.float32), SAMPLE_RATE)
    assert to_mono_16k(np.zeros((0, 2), np.int16), 44_100).shape == (0,)


def test_read_audio_resamples_a_file(tmp_path):
    path = tmp_path / "tone.wav"
    sf.write(path, sine(300.0, 0.5, 22_050), 22_050)
    audio = read_audio(path)
    assert audio.dtype == np.float32 and abs(len(audio) - 8000) <= 1
    assert abs(peak_hz(audio) - 300.0) < 3.0


def test_read_audio_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="the file has no audio"):
        read_audio(empty)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(200)))
    with pytest.raises(AudioError, match="corrupt.*FLAC.*WAV"):
        read_audio(corrupt)


# --- sources -------------------------------------------------------------------------------


async def test_file_source_frames_are_consecutive_and_stamped(tmp_path):
    path = tmp_path / "one_second.wav"
    samples = sine(200.0, 1.0, SAMPLE_RATE)
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    source = FileSource(path)
    frames = [f async for f in source.frames()]
    assert [f.t for f in frames] == pytest.approx([i * FRAME_SAMPLES / SAMPLE_RATE for i in range(len(frames))])
    assert all(len(f.samples) == FRAME_SAMPLES for f in frames[:-1])
    assert 0 < len(frames[-1].samples) <= FRAME_SAMPLES
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]), samples)
    assert source.now() == pytest.approx(1.0)


async def test_realtime_source_is_paced_by_the_wall_clock():
    source = ArraySource(np.zeros(4800, np.float32), SAMPLE_RATE, realtime=True)  # 0.3 s
    start = time.monotonic()
    async for frame in source.frames():
        # A frame is handed over once its last sample would have been captured.
        assert source.now() >= frame.end - 0.005
    elapsed = time.monotonic() - start
    assert 0.28 <= elapsed < 1.5


async def test_array_source_resamples_and_stops_when_closed():
    source = ArraySource(sine(440.0, 2.0, 44_100), 44_100)
    assert source.duration == pytest.approx(2.0, abs=1e-4)
    seen = 0
    async with source:
        async for _ in source.frames():
            seen += 1
            if seen == 3:
                await source.close()
    assert seen == 3


def test_sources_reject_nan_audio(tmp_path):
    with pytest.raises(AudioError, match="NaN"):
        ArraySource(np.array([0.0, np.nan] * 600, np.float32), SAMPLE_RATE)
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.1, np.nan] * 600, np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav.*NaN"):
        FileSource(path)


def test_sound_devices_fail_cleanly_without_a_sound_card():
    """No PortAudio (this machine) or no device (CI): an AudioError saying what to do, never an ImportError."""
    for open_device in (MicrophoneSource, SpeakerSink):
        try:
            device = open_device()
        except AudioError as exc:
            assert "libportaudio2" in str(exc) or "device" in str(exc)
        else:  # a machine with a real sound card
            pytest.skip(f"{type(device).__name__} opened a real device")


# --- sinks ---------------------------------------------------------------------------------


async def test_memory_and_wav_sinks_keep_what_was_written(tmp_path):
    memory, wav = MemorySink(), WavSink(tmp_path / "out.wav", sample_rate=22_050)
    for sink in (memory, wav):
        await sink.write(np.full(100, 0.25, np.float32))
        await sink.write(np.full(50, -0.25, np.float32))
        await sink.drain()
        assert sink.stop() == pytest.approx(150 / sink.sample_rate)
        with pytest.raises(AudioError, match="NaN"):
            await sink.write(np.array([np.nan], np.float32))
        with pytest.raises(AudioError, match="mono"):
            await sink.write(np.zeros((10, 2), np.float32))
        await sink.close()
    assert memory.audio().tolist() == [0.25] * 100 + [-0.25] * 50
    written, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 22_050 and len(written) == 150
    np.testing.assert_allclose(written[:100], 0.25, atol=1e-4)


# --- virtual devices -----------------------------------------------------------------------


@pytest.mark.slow
async def test_virtual_microphone_plays_real_speech_on_its_clock(teacher):
    speech = teacher.speak("Turn on the lights.")
    clock = VirtualClock()
    mic = VirtualMicrophone(clock, tail_s=0.5)
    mic.play_at(1.0, speech.samples, speech.sample_rate)
    speech16 = to_mono_16k(speech.samples, speech.sample_rate)
    assert mic.end_time == pytest.approx(1.0 + len(speech16) / SAMPLE_RATE + 0.5)
    frames = []
    async for frame in mic.frames():
        assert clock.now() == pytest.approx(frame.end)  # time moves only with the frames
        frames.append(frame)
    assert frames[-1].end == pytest.approx(mic.end_time)
    audio = np.concatenate([f.samples for f in frames])
    assert not audio[:SAMPLE_RATE].any()  # silence before the scripted speech
    np.testing.assert_array_equal(audio[SAMPLE_RATE : SAMPLE_RATE + len(speech16)], speech16)
    with pytest.raises(AudioError, match="already delivered"):
        mic.play_at(0.5, speech16)


async def test_virtual_speaker_timeline_and_barge_in():
    clock = VirtualClock()
    mic = VirtualMicrophone(clock, [(0.0, np.full(8000, 0.1, np.float32))], tail_s=2.0)  # ends at 2.5 s
    speaker = VirtualSpeaker(clock)
    reply = np.full(16_000, 0.5, np.float32)  # 1 s
    stopped_at = None
    async for frame in mic.frames():
        if frame.end == pytest.approx(0.64):
            await speaker.write(reply)  # plays 0.64 .. 1.64
            await speaker.write(reply[:8000])  # queued behind it: 1.64 .. 2.14
            assert speaker.queued_until == pytest.approx(2.14)
        if frame.end == pytest.approx(1.024) and stopped_at is None:
            stopped_at = clock.now()
            played = speaker.stop()  # the user barges in
            assert played == pytest.approx(1.024 - 0.64, abs=1e-4)
    assert speaker.played_seconds == pytest.approx(1.024 - 0.64, abs=1e-4)
    right = speaker.recording(2.5)
    start, end = round(0.64 * SAMPLE_RATE), round(1.024 * SAMPLE_RATE)
    assert not right[:start].any() and not right[end:].any()
    assert np.all(right[start:end] == 0.5)
    stereo = stereo_recording(mic, speaker)
    assert stereo.shape == (round(2.5 * SAMPLE_RATE), 2)
    assert np.all(stereo[:8000, 0] == np.float32(0.1)) and not stereo[8000:, 0].any()
    np.testing.assert_array_equal(stereo[:, 1], right)


async def test_virtual_speaker_drain_after_the_microphone_ends():
    clock = VirtualClock()
    speaker = VirtualSpeaker(clock, sample_rate=22_050)
    await speaker.write(np.zeros(22_050, np.float32))
    await speaker.drain()  # no microphone drives the clock: time jumps to the end of playback
    assert clock.now() == pytest.approx(1.0)
    assert speaker.played_seconds == pytest.approx(1.0)
    assert len(speaker.recording(1.5)) == 24_000


async def test_realtime_virtual_clock_follows_the_wall_clock():
    clock = VirtualClock(realtime=True)
    mic = VirtualMicrophone(clock, tail_s=0.2)
    start = time.monotonic()
    frames = [f async for f in mic.frames()]
    assert frames[-1].end == pytest.approx(0.2)
    assert 0.18 <= time.monotonic() - start < 1.5
    assert clock.now() >= 0.2


async def test_virtual_speaker_drain_follows_the_microphone_clock():
    import asyncio

    clock = VirtualClock()
    mic = VirtualMicrophone(clock, tail_s=3.0)
    speaker = VirtualSpeaker(clock)
    drained_at = []

    async def listen():
        async for frame in mic.frames():
            if frame.end == pytest.approx(0.32):
                await speaker.write(np.zeros(8000, np.float32))  # plays 0.32 .. 0.82

    async def wait_for_playback():
        await asyncio.sleep(0)
        while not speaker.segments:
            await asyncio.sleep(0)
        await speaker.drain()
        drained_at.append(clock.now())

    await asyncio.gather(listen(), wait_for_playback())
    # Released by the first microphone frame at or after the end of playback, not by the mic's end.
    assert 0.82 <= drained_at[0] <= 0.82 + 0.032 + 1e-9
    assert clock.now() == pytest.approx(3.0)


def test_played_history_keeps_one_unbroken_reference_through_jittery_stamps():
    from audio_io.sinks import PlayedHistory

    history = PlayedHistory(keep_s=0.5)
    block = np.arange(160, dtype=np.float32)  # 10 ms
    for i in range(100):  # one second of blocks, each stamped up to 3 ms off
        history.add(block + i, 0.2 + 0.01 * i + 0.003 * (-1) ** i)
    start = round(0.203 * 16000)  # the first stamp anchors the timeline
    assert np.array_equal(history.render(start + 160 * 98, start + 160 * 100), np.concatenate([block + 98, block + 99]))
    assert not history.render(start - 100, start).any()  # before anything played: silence
    assert not history.render(start, start + 160).any()  # older than keep_s: forgotten
    history.add(block, 3.0)  # a stamp far from where the last block ended starts a new stretch
    assert np.array_equal(history.render(48_000, 48_160), block)


async def test_a_speaker_stamps_what_reaches_the_loudspeaker_on_the_session_clock(monkeypatch):
    """The PortAudio callback, driven by hand: what it hands over is rendered at clock + output latency."""
    import types

    import audio_io.sources

    streams = []

    class Stream:
        latency = 0.05

        def __init__(self, callback, **kw):
            self.callback = callback
            streams.append(self)

        def start(self):
            pass

    fake = types.SimpleNamespace(query_devices=lambda device, kind: {}, OutputStream=Stream)
    monkeypatch.setattr(audio_io.sources, "_sounddevice", lambda what: fake)
    now = [1.0]
    sink = SpeakerSink(clock=lambda: now[0])
    tone = np.full(800, 0.5, np.float32)
    await sink.write(tone)
    out = np.zeros((512, 1), np.float32)
    times = types.SimpleNamespace(currentTime=10.0, outputBufferDacTime=10.04)  # 40 ms to the loudspeaker
    streams[0].callback(out, 512, times, None)
    now[0] += 512 / 16000
    streams[0].callback(out, 512, times, None)
    heard_from = round(1.04 * 16000)
    played = sink.render(heard_from - 10, heard_from + 1024)
    assert not played[:10].any() and np.array_equal(played[10:810], tone) and not played[810:].any()
    assert sink.played_seconds == pytest.approx(800 / 16000)


def test_a_recorded_reference_renders_with_silence_around_it():
    from audio_io.sinks import PlayedHistory

    far = np.arange(1, 6, dtype=np.float32)
    played = PlayedHistory.of(far)
    assert played.render(-2, 3).tolist() == [0, 0, 1, 2, 3]
    assert played.render(3, 8).tolist() == [4, 5, 0, 0, 0]
    assert PlayedHistory.of(np.zeros(0, np.float32)).render(0, 4).tolist() == [0, 0, 0, 0]
