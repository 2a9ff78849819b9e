"""Ray job: every new video under a folder or prefix → the same video with generated speech.

    ray job submit --working-dir . -- python jobs/dub.py s3://media/silent s3://media/dubbed \
        --checkpoint s3://models/runs/base
Same program as `l2s dub`; on a cluster RAY_ADDRESS is set and the job attaches to it. Run it on
a schedule (manifests/raycronjob-dub.yaml): each run dubs what is new and retries what failed for
a passing reason; a run killed midway is finished by the next.
"""

from l2s.cli import app

if __name__ == "__main__":
    app(["dub", *__import__("sys").argv[1:]])
