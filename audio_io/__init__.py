"""Sound in and out: sources, sinks, virtual (clocked) devices, resampling and the streaming VAD.

Nothing here imports sounddevice or onnxruntime at import time, so machines without PortAudio
can use everything that does not touch a sound card.
"""

from audio_io.frames import FRAME_SAMPLES, SAMPLE_RATE, AudioError, AudioFrame
from audio_io.resample import read_audio, to_mono_16k
from audio_io.sinks import AudioSink, MemorySink, SpeakerSink, WavSink
from audio_io.sources import ArraySource, AudioSource, FileSource, MicrophoneSource
from audio_io.vad import SileroVad, StreamingVad, VadEvent
from audio_io.virtual import VirtualClock, VirtualMicrophone, VirtualSpeaker, stereo_recording

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "ArraySource",
    "AudioError",
    "AudioFrame",
    "AudioSink",
    "AudioSource",
    "FileSource",
    "MemorySink",
    "MicrophoneSource",
    "SileroVad",
    "SpeakerSink",
    "StreamingVad",
    "VadEvent",
    "VirtualClock",
    "VirtualMicrophone",
    "VirtualSpeaker",
    "WavSink",
    "read_audio",
    "stereo_recording",
    "to_mono_16k",
]
