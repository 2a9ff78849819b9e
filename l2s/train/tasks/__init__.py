"""The per-model parts of training, by the name a run's loop config gives (`loop.ray_worker`)."""

from l2s.train.tasks.asr import AsrTask
from l2s.train.tasks.lip2speech import Lip2SpeechTask
from l2s.train.tasks.lipsync import LipSyncTask
from l2s.train.tasks.sync import SyncTask
from l2s.train.tasks.vocoder import VocoderTask

TASKS = {
    "asr": AsrTask,
    "lip2speech": Lip2SpeechTask,
    "lipsync": LipSyncTask,
    "sync": SyncTask,
    "vocoder": VocoderTask,
}
