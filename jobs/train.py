"""Ray job: feature dataset → trained lip-to-speech model.

    ray job submit --working-dir . -- python jobs/train.py s3://b/features/lrs3 \
        --out s3://b/runs/base --preset base --nodes 8 --gpus-per-node 1
Same program as `l2s train`; on a cluster RAY_ADDRESS is set and the job attaches to it.
Submitting it again with the same --out resumes from the run's latest checkpoint.
"""

from l2s.cli import app

if __name__ == "__main__":
    app(["train", *__import__("sys").argv[1:]])
