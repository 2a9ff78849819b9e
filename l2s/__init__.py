"""l2s: lip-to-speech at corpus scale on Ray."""

import os

__version__ = "0.1.0"

# OpenMP's threads spin while they wait by default. On a small, shared machine a spinning thread
# takes the core its sibling needs: a training step of the tiny preset on 2 threads took 16 s
# instead of 0.3 s under load (benchmarks/train.py --profile). It must be set before torch loads
# its OpenMP runtime, so here, where every l2s entry point starts; Ray workers get it through
# their runtime environment (l2s.train.run_config).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
