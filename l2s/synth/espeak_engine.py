"""The espeak-ng C library through ctypes, run as a short-lived child process per utterance.

No maintained Python binding exposes espeak-ng's phoneme events, and those events (phoneme +
audio position) are what ties the rendered lips to the speech, hence ctypes. espeak-ng keeps
state across utterances inside a process (the same text came out ±200 samples long on repeated
calls, even with its random seeds fixed), and terminate + re-initialise hangs (ENVIRONMENT.md):
so each utterance is spoken by a fresh process, which makes the corpus bit-exact for a seed.
This module imports only the standard library, so the child starts in a few tens of ms.

Protocol: stdin is one JSON object {"text", "voice": "en-us+m1", "rate", "pitch", "range"};
stdout is one JSON line {"sample_rate", "events": [[type, ms, label], …]} then int16 PCM bytes.
"""

from __future__ import annotations

import ctypes
import json
import sys

import espeakng_loader

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
EVENT_WORD, EVENT_END, EVENT_MSG_TERMINATED, EVENT_PHONEME = 1, 5, 6, 7
RATE, PITCH, RANGE = 1, 3, 4


class _EventId(ctypes.Union):
    _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def speak(
    text: str, voice: str, rate: int, pitch: int, pitch_range: int
) -> tuple[int, bytes, list]:
    """(sample rate, int16 PCM bytes, events) for one utterance; call once per process."""
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
    lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
    lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
    lib.espeak_Synth.argtypes = (
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    )  # fmt: skip
    data = espeakng_loader.get_data_path().encode()
    options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_DONT_EXIT
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, options)
    if sample_rate <= 0:
        raise RuntimeError(f"espeak-ng failed to initialise with data at {data.decode()}")
    pcm: list[bytes] = []
    events: list[list] = []

    def on_audio(wav, n_samples, event_array) -> int:
        if n_samples > 0:
            pcm.append(ctypes.string_at(wav, n_samples * 2))
        i = 0
        while event_array[i].type != 0:
            event = event_array[i]
            if event.type == EVENT_PHONEME:
                label = event.id.string.decode("ascii", errors="replace")
                events.append([event.type, event.audio_position, label])
            elif event.type == EVENT_WORD:
                events.append(
                    [event.type, event.audio_position, f"{event.text_position}:{event.length}"]
                )
            i += 1
        return 0

    callback = _CALLBACK(on_audio)  # kept referenced while the library may call it
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"espeak-ng has no voice {voice!r}")
    for parameter, value in ((RATE, rate), (PITCH, pitch), (RANGE, pitch_range)):
        lib.espeak_SetParameter(parameter, value, 0)
    encoded = text.encode()
    status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, 1, 0, CHARS_UTF8, None, None)
    if status != 0:
        raise RuntimeError(f"espeak-ng failed on {text!r} (error {status})")
    return sample_rate, b"".join(pcm), events


def main() -> None:
    request = json.loads(sys.stdin.read())
    sample_rate, pcm, events = speak(
        request["text"], request["voice"], request["rate"], request["pitch"], request["range"]
    )
    sys.stdout.buffer.write(
        json.dumps({"sample_rate": sample_rate, "events": events}).encode() + b"\n"
    )
    sys.stdout.buffer.write(pcm)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
