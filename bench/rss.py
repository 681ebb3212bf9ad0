"""Memory of a process from /proc, for the hostile-client benches
(bench/hostile_smtp.py, bench/hostile_http.py): one sampler, so both report
peak RSS the same way."""
import threading
import time


def status(pid, field):
    """A /proc/PID/status field (VmRSS, VmHWM, ...) in MiB; 0 if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


class Sampler(threading.Thread):
    """Samples VmRSS of `pid` every 50 ms; keeps the maximum per phase."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.running = True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, status(self.pid, "VmRSS"))
            except OSError:
                return
            time.sleep(0.05)

    def take(self):
        """The peak since the last call, then starts a new phase."""
        p, self.peak = self.peak, status(self.pid, "VmRSS")
        return p
