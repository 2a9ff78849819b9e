"""Ray job: video corpus manifest → feature Parquet.

    ray job submit --working-dir . -- python jobs/preprocess.py s3://b/lrs3.parquet s3://b/features/lrs3
Same program as `l2s preprocess`; on a cluster RAY_ADDRESS is set and the job attaches to it.
"""

from l2s.cli import app

if __name__ == "__main__":
    app(["preprocess", *__import__("sys").argv[1:]])
