"""The per-model parts of training, by the name a run's loop config gives (`loop.ray_worker`)."""

from l2s.train.tasks.lip2speech import Lip2SpeechTask
from l2s.train.tasks.vocoder import VocoderTask

TASKS = {"lip2speech": Lip2SpeechTask, "vocoder": VocoderTask}
