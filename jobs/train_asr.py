"""Ray job: feature dataset → a CTC speech recognizer on its recordings' log-mels and transcripts.

    ray job submit --working-dir . -- python jobs/train_asr.py s3://b/features/lrs3 \
        --out s3://b/runs/asr --preset base --gpus-per-node 1
Same program as `l2s train-asr`; submitting it again with the same --out resumes.
"""

from l2s.cli import app

if __name__ == "__main__":
    app(["train-asr", *__import__("sys").argv[1:]])
