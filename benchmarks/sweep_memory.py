"""Peak RSS of a many-trial sweep in one process: does memory grow with the number of trials?

    python benchmarks/sweep_memory.py --trials 20

Runs `mnist-exp sweep` on a tiny embedded slice in a temporary store and samples the process's
resident memory (/proc/PID/status) every 0.2 s; prints RSS after each trial and the peak.
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = """name: memory
search_space: {space}
data: {{source: embedded, train_size: 300, test_size: 100, validation_split: 0.2}}
training: {{epochs: 1}}
tuner: {{kind: random, max_trials: {trials}}}
"""


def rss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"VmRSS:\s+(\d+)", text)  # absent once the process has exited
    return int(m.group(1)) / 1024 if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mlruns").mkdir()
        exp = tmp / "memory.yaml"
        exp.write_text(EXPERIMENT.format(space=ROOT / "search_spaces" / "baseline.yaml", trials=args.trials))
        cli = Path(sys.executable).parent / "mnist-exp"
        t0 = time.time()
        proc = subprocess.Popen([str(cli), "sweep", str(exp)], cwd=tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        peak, per_trial = 0.0, []
        import threading

        def sample():
            nonlocal peak
            while proc.poll() is None:
                peak = max(peak, rss_mib(proc.pid))
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        for line in proc.stdout:
            m = re.match(r"\[sweep memory\] trial (\d+)/", line)
            if m:
                per_trial.append((int(m.group(1)), rss_mib(proc.pid)))
                print(f"after trial {m.group(1):>3}: RSS {per_trial[-1][1]:7.1f} MiB", flush=True)
        proc.wait()
        wall = time.time() - t0
    first, last = per_trial[0][1], per_trial[-1][1]
    print(f"\n{len(per_trial)} trials in {wall:.0f} s; RSS after trial 1: {first:.0f} MiB, after trial "
          f"{per_trial[-1][0]}: {last:.0f} MiB ({(last - first) / max(len(per_trial) - 1, 1):+.1f} MiB/trial); "
          f"peak {peak:.0f} MiB; exit code {proc.returncode}")


if __name__ == "__main__":
    main()
