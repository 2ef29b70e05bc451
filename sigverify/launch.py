"""Multi-worker training on one machine: starts N worker processes of an experiment script, each with its own
`TF_CONFIG` on free loopback ports and `--strategy multiworker`, and leaves none behind when one fails or the launch is
interrupted. Worker 0 is the chief: it alone writes the run folder and talks to the terminal.

    python -m sigverify.launch --workers 2 experiments/triplet.py --profile quick   (or: make exp-triplet-multiworker)

On several machines no launcher is needed: each host runs the script with its own `TF_CONFIG` (see README, "Scaling").
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from sigverify.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def free_loopback_ports(count: int) -> list[int]:
    """`count` distinct ports that are free on the loopback interface right now (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for held in sockets:
            held.bind((LOOPBACK, 0))
        return [held.getsockname()[1] for held in sockets]


def tf_config(worker_addresses: list[str], index: int) -> str:
    """The `TF_CONFIG` of worker `index` in a cluster of workers only (worker 0 is then the chief)."""
    return json.dumps({"cluster": {"worker": worker_addresses}, "task": {"type": "worker", "index": index}})


def worker_arguments(script_args: list[str]) -> list[str]:
    """The script's flags with `--strategy multiworker` added; any other strategy is refused."""
    strategies = [script_args[i + 1] for i, arg in enumerate(script_args[:-1]) if arg == "--strategy"]
    strategies += [arg.split("=", 1)[1] for arg in script_args if arg.startswith("--strategy=")]
    for strategy in strategies:
        if strategy != "multiworker":
            raise ConfigError(f"--strategy {strategy}: the launcher runs workers under --strategy multiworker; "
                              "drop the flag (or STRATEGY=) or use make exp-triplet for one process")
    return list(script_args) if strategies else [*script_args, "--strategy", "multiworker"]


def _kill_me_with_parent():
    """A function for the child to run before exec so that the kernel kills it if the launcher dies (even by SIGKILL):
    no worker is orphaned. Linux only; resolved here, in the parent, so the child only makes one system call."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _relay(stream, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sys.stderr.buffer.write(prefix.encode() + line)
        sys.stderr.buffer.flush()
    stream.close()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: the shell's 128 + N


class WorkerGroup:
    """The worker processes, each in its own process group so that a signal reaches everything a worker started."""

    def __init__(self):
        self.processes: list[subprocess.Popen] = []
        self.relays: list[threading.Thread] = []

    def start(self, commands: list[list[str]], environments: list[dict]) -> None:
        """Worker 0 (the chief) keeps the terminal; the others' stderr is relayed with a `[worker i]` prefix."""
        before_exec = _kill_me_with_parent()
        for index, (command, environment) in enumerate(zip(commands, environments)):
            chief = index == 0
            self.processes.append(subprocess.Popen(
                command, env=environment, start_new_session=True, preexec_fn=before_exec,  # noqa: PLW1509 (see below)
                stdout=None if chief else subprocess.DEVNULL, stderr=None if chief else subprocess.PIPE))
        # Relay threads start after every fork: forking while other threads run is unsafe with preexec_fn.
        for index, process in enumerate(self.processes[1:], start=1):
            relay = threading.Thread(target=_relay, args=(process.stderr, f"[worker {index}] "), daemon=True)
            relay.start()
            self.relays.append(relay)

    def running(self) -> list[subprocess.Popen]:
        return [process for process in self.processes if process.poll() is None]

    def signal_all(self, signum: int) -> None:
        """`signum` to every worker's process group, also of a worker that has exited: what it started may still run."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)

    def stop(self, signum: int, grace_seconds: float) -> None:
        """`signum` to every worker, then SIGKILL to whatever is left after `grace_seconds` (a worker blocked in a
        collective op whose peer is gone cannot run its signal handler)."""
        self.signal_all(signum)
        deadline = time.monotonic() + grace_seconds
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.signal_all(signal.SIGKILL)
        for process in self.processes:
            process.wait()
        for relay in self.relays:
            relay.join(timeout=5)

    def wait(self) -> int:
        """0 when every worker exits 0; the exit code of the first worker that fails otherwise."""
        while True:
            for process in self.processes:
                if process.poll() not in (None, 0):
                    return _exit_code(process.returncode)
            if not self.running():
                return 0
            time.sleep(0.2)


class _Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def launch(script: str, script_args: list[str], workers: int = 2, grace_seconds: float = 15.0) -> int:
    """Run `script` (a Python file, run with this interpreter) as `workers` local workers of one
    MultiWorkerMirroredStrategy cluster; returns 0 when all finish, the first failing worker's exit code after stopping
    the others, or 130 after forwarding SIGINT/SIGTERM to every worker."""
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    arguments = worker_arguments(script_args)
    addresses = [f"{LOOPBACK}:{port}" for port in free_loopback_ports(workers)]
    commands = [[sys.executable, script, *arguments] for _ in range(workers)]
    environments = [dict(os.environ, TF_CONFIG=tf_config(addresses, index)) for index in range(workers)]

    def interrupt(signum, frame):
        raise _Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    group = WorkerGroup()
    try:
        print(f"launching {workers} workers on {', '.join(addresses)}; worker 0 is the chief", file=sys.stderr)
        group.start(commands, environments)
        code = group.wait()
        if code:
            failed = next(i for i, p in enumerate(group.processes) if p.returncode not in (None, 0))
            print(f"worker {failed} exited with {code}: stopping the others", file=sys.stderr)
            group.stop(signal.SIGTERM, grace_seconds)
        return code
    except _Interrupted as why:
        print(f"\n{why}: forwarding it to every worker", file=sys.stderr)
        for s in previous:  # a second Ctrl-C must not abort the clean-up
            signal.signal(s, signal.SIG_IGN)
        group.stop(why.signum, grace_seconds)
        return EXIT_INTERRUPTED
    finally:
        group.stop(signal.SIGKILL, 0)  # also ends anything a finished worker left running
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sigverify.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes on this machine (default 2)")
    parser.add_argument("--grace-seconds", type=float, default=15.0,
                        help="how long a worker may take to stop after SIGTERM/SIGINT before it is killed (default 15)")
    parser.add_argument("script", help="the experiment script, e.g. experiments/triplet.py")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its flags, passed to every worker")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.script):
        print(f"error: {args.script}: no such script; expected an experiment script such as experiments/triplet.py",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return launch(args.script, args.script_args, args.workers, args.grace_seconds)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
