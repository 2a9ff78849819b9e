"""Ray job: generated splits → scores, summary table and HTML report.

    ray job submit --working-dir . -- python jobs/score.py results/lrs3-test --asr open
Same program as `l2s score` (one scoring actor per CPU of the cluster).
"""

from l2s.cli import app

if __name__ == "__main__":
    app(["score", *__import__("sys").argv[1:]])
