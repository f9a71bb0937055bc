#!/usr/bin/env python3
"""Best wall time and read I/O of shell commands, run interleaved so that all see the same load.

    measure_io.py RUNS 'LABEL|RESET|CMD' ...

Each CMD runs RUNS times through `sh -c` (start it with `exec` so that the measured process is
the command itself); RESET, if given, runs untimed before each run. The read counters come from
/proc/PID/io, read after the process has exited but before it is reaped. Prints one line per
command: LABEL SECONDS RCHAR READ_BYTES (the I/O of the fastest run).
"""
import os
import subprocess
import sys
import time

runs, specs = int(sys.argv[1]), [a.split("|", 2) for a in sys.argv[2:]]
best = {}
for _ in range(runs):
    for label, reset, cmd in specs:
        if reset:
            subprocess.run(["sh", "-c", reset], check=True)
        start = time.perf_counter()
        p = subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL)
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        secs = time.perf_counter() - start
        with open(f"/proc/{p.pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines() if line)
        if p.wait() != 0:
            sys.exit(f"{label}: `{cmd}` failed")
        if label not in best or secs < best[label][0]:
            best[label] = (secs, int(io["rchar"]), int(io["read_bytes"]))
for label, _, _ in specs:
    secs, rchar, disk = best[label]
    print(f"{label} {secs:.3f} {rchar} {disk}")
