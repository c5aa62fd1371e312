r"""Runs N processes of train.py (or eval.py) on this machine as one multi-process JAX job.

  python scripts/launch_local.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/lm_shakespeare.py:mla,runlocal --workdir=/tmp/lm_mp

The arguments after `--` go to every process, each with --coordinator_address (a free local
port), --num_processes and --process_id added. --devices_per_process sets the CPU devices of
each process (JAX_NUM_CPU_DEVICES), so a CPU box can rehearse a multi-host run; cross-process
collectives then go through gloo. Every output line is prefixed with its process id.

Ctrl-C (or SIGTERM) is passed on to every process once: training saves a checkpoint and stops;
a second one kills them. When a process fails, the others are stopped too, and the launcher
exits with the first non-zero status. No process outlives the launcher: each runs in its own
process group, killed on the way out, and on Linux dies with the launcher even if it is killed.
"""

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACE_S = 10  # for the others to exit after one failed, before they are killed.


def parse(argv):
  parser = argparse.ArgumentParser(prog="launch_local.py", description=__doc__.split("\n")[0])
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--devices_per_process", type=int, default=None,
                      help="CPU devices per process (default: JAX's, one).")
  parser.add_argument("--script", default="train.py", help="train.py or eval.py.")
  parser.add_argument("args", nargs="*", help="after --: the script's flags.")
  args = parser.parse_args(argv)
  if args.num_processes < 1:
    parser.error(f"--num_processes={args.num_processes} is invalid: must be >= 1")
  if args.devices_per_process is not None and args.devices_per_process < 1:
    parser.error(f"--devices_per_process={args.devices_per_process} is invalid: must be >= 1")
  if args.script not in ("train.py", "eval.py"):
    parser.error(f"--script={args.script} is invalid: choose train.py or eval.py")
  taken = [a for a in args.args if a.lstrip("-").split("=")[0] in (
      "coordinator_address", "num_processes", "process_id")]
  if taken:
    parser.error(f"{taken[0]}: the launcher sets it for each process; drop it (the "
                 "launcher's own flags go before the --)")
  return args


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _die_with_parent():
  """Runs in the child before exec: Linux kills it when the launcher dies, even by SIGKILL."""
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG.


def start(args) -> list[subprocess.Popen]:
  address = f"127.0.0.1:{free_port()}"
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  if args.devices_per_process:
    env["JAX_NUM_CPU_DEVICES"] = str(args.devices_per_process)
  procs = []
  for i in range(args.num_processes):
    cmd = [sys.executable, os.path.join(ROOT, args.script), *args.args,
           f"--coordinator_address={address}", f"--num_processes={args.num_processes}",
           f"--process_id={i}"]
    # Own process group: a terminal's Ctrl-C reaches the launcher only, which passes it on once.
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace",
                                  start_new_session=True, preexec_fn=_die_with_parent))
  return procs


def relay(proc, prefix: str, lock: threading.Lock) -> threading.Thread:
  def run():
    for line in proc.stdout:
      with lock:
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  return thread


def kill(procs) -> None:
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)  # the group: grain workers too.
      except ProcessLookupError:
        pass
  for p in procs:
    p.wait()


def supervise(procs, lock) -> int:
  """Waits for every process; the first non-zero exit status (128 + n for signal n), or 0."""
  signals = []
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda signum, frame: signals.append(signum))
  forwarded, failed, deadline = 0, None, None
  while any(p.poll() is None for p in procs):
    if len(signals) > forwarded:
      forwarded = len(signals)
      if forwarded > 1:
        break  # a second Ctrl-C: kill them.
      for p in procs:
        if p.poll() is None:
          p.send_signal(signals[0])
    if failed is None:
      failed = next((p for p in procs if p.poll()), None)
      if failed is not None:
        with lock:
          print(f"launch_local.py: process {procs.index(failed)} exited with status "
                f"{failed.returncode}; stopping the others", file=sys.stderr, flush=True)
        for p in procs:
          if p.poll() is None:
            p.terminate()
        deadline = time.monotonic() + GRACE_S
    if deadline is not None and time.monotonic() > deadline:
      break  # a peer of a dead process can block in a collective forever.
    time.sleep(0.05)
  kill(procs)
  rc = failed.returncode if failed is not None else next(
      (p.returncode for p in procs if p.returncode), 0)
  return 128 - rc if rc < 0 else rc


def main(argv) -> int:
  args = parse(argv)
  procs, lock = [], threading.Lock()
  try:
    procs = start(args)
    width = len(str(args.num_processes - 1))
    threads = [relay(p, f"[{i:>{width}}] ", lock) for i, p in enumerate(procs)]
    rc = supervise(procs, lock)
    for t in threads:
      t.join(timeout=5)
    return rc
  finally:
    kill(procs)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
