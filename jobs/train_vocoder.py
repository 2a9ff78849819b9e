"""Ray job: feature dataset (+ the recordings its manifest names) → trained HiFi-GAN vocoder.

    ray job submit --working-dir . -- python jobs/train_vocoder.py s3://b/features/lrs3 \
        --out s3://b/runs/hifigan --preset v1 --nodes 2 --gpus-per-node 8 --batch-size 16
Same program as `l2s train-vocoder`; on a cluster RAY_ADDRESS is set and the job attaches to it.
Submitting it again with the same --out resumes from the run's latest checkpoint.
"""

from l2s.cli import app

if __name__ == "__main__":
    app(["train-vocoder", *__import__("sys").argv[1:]])
