"""`rl_run` on the unit tests' scripted math engine (no vLLM), in a process of its own, for the
kill -9 tests: `python scripted_rl.py MODEL_DIR OUT_DIR ITERATIONS`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[3]))

from agentfactory.rl.run import rl_run
from tests.unit.test_rl_loop import _config, _engine

if __name__ == "__main__":
    model, out, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = _config(model, out, iterations=iterations, checkpoint_every=2, threads=1)
    result = rl_run(cfg, engine=_engine(), console=None)
    print(f"done: {result.iterations} iterations, policy v{result.policy_version}", flush=True)
