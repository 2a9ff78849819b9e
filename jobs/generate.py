"""Ray job: feature dataset + checkpoint → generated speech for one split.

    ray job submit --working-dir . -- python jobs/generate.py s3://b/features/lrs3 \
        --split test --checkpoint s3://b/runs/base --out results/lrs3-test
Same program as `l2s generate` (model actors on Ray Data; GPU actors when the cluster has GPUs);
submitting it again finishes an interrupted run.
"""

from l2s.cli import app

if __name__ == "__main__":
    app(["generate", *__import__("sys").argv[1:]])
