"""The long fuzzing profile: tests/integration/test_fuzz.py with many more generated inputs per property.

    python benchmarks/fuzz.py [EXAMPLES]      # default 20000 per property (the command-line property: a fifteenth)

Prints, per property, the examples tried and the outcome; a failure Hypothesis finds is shown
shrunk to its smallest input: keep it as a case of tests/integration/bad_inputs/ and fix it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    env = dict(os.environ, FLEXPL_FUZZ_EXAMPLES=str(examples), OMP_NUM_THREADS="1")
    t = time.time()
    rc = subprocess.call([sys.executable, "-m", "pytest", str(ROOT / "tests/integration/test_fuzz.py"), "-q",
                          "-p", "no:cacheprovider", "--durations=0"], env=env, cwd=ROOT)
    print(f"fuzz: {examples} examples per property ({max(10, examples // 15)} for the command line), "
          f"{time.time() - t:.0f} s, {'no failure' if rc == 0 else 'FAILURES above'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
