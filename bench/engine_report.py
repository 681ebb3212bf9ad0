#!/usr/bin/env python3
"""Turns the measurements of bench/engine.sh (env vars + proxy stats JSON in
$WORK) into a table: printed (engine.sh puts it into bench/RESULTS.md with
lib.sh's write_results_section) and written to $WORK/results.json."""
import datetime
import json
import os
import subprocess

E = os.environ
W = E["WORK"]


def js(name):
    with open(os.path.join(W, name)) as f:
        return json.load(f)


def op(stats, *names, field="requests"):
    return sum(stats["ops"].get(n, {}).get(field, 0) for n in names)


def put_class(stats):
    # AWS bills PUT, COPY, POST and LIST in one (expensive) tier.
    return op(stats, "PUT", "PUT_PART", "MULTIPART_CREATE", "MULTIPART_COMPLETE", "DELETE_MULTI", "LIST", "POST")


def row(name, ls, ms, target=None, fmt="{:,.0f}", lower_is_better=True):
    ratio = (ms / ls) if ls else (0.0 if ms == 0 else float("inf"))
    ok = ""
    if target is not None:
        ok = "yes" if ratio <= target else "**no**"
    t = f"<= {target}x" if target is not None else ""
    return {"metric": name, "litestream": ls, "mailsafe": ms, "ratio": ratio, "target": t, "met": ok, "fmt": fmt}


lf, ls_ = js("ls.first.json"), js("ls.steady.json")
mf, ms_ = js("ms.first.json"), js("ms.steady.json")
lo, mo = js("ls.onerow.json"), js("ms.onerow.json")
mib = lambda b: b / 2**20
rows = [
    row("first full backup: MiB uploaded", mib(lf["total"]["bytes_in"]), mib(mf["total"]["bytes_in"]), 0.6, "{:,.1f}"),
    row("first full backup: seconds", float(E["LS_FIRST_S"]), float(E["MS_FIRST_S"]), None, "{:,.1f}"),
    row("first full backup: CPU seconds", float(E["LS_FIRST_CPU"]), float(E["MS_FIRST_CPU"]), None, "{:,.2f}"),
    row("first full backup: PUT-class requests", put_class(lf), put_class(mf), None),
    # Issue 18: zstd over changed pages should beat Litestream's LZ4 LTX files by half.
    row("steady state: MiB uploaded", mib(ls_["total"]["bytes_in"]), mib(ms_["total"]["bytes_in"]), 0.5, "{:,.2f}"),
    row("steady state: MiB downloaded", mib(ls_["total"]["bytes_out"]), mib(ms_["total"]["bytes_out"]), None, "{:,.2f}"),
    row("steady state: PUT requests", op(ls_, "PUT", "PUT_PART"), op(ms_, "PUT", "PUT_PART"), 1.0),
    row("steady state: PUT-class requests (PUT/POST/LIST)", put_class(ls_), put_class(ms_), None),
    row("steady state: GET+HEAD requests", op(ls_, "GET", "HEAD"), op(ms_, "GET", "HEAD"), None),
    row("steady state: sidecar CPU seconds", float(E["LS_STEADY_CPU"]), float(E["MS_STEADY_CPU"]), 0.5, "{:,.2f}"),
    row("one-row change: KB uploaded", lo["total"]["bytes_in"] / 1000, mo["total"]["bytes_in"] / 1000, None, "{:,.1f}"),
    row("one-row change: PUT-class requests", put_class(lo), put_class(mo), None),
    row("CPU seconds (whole run)", float(E["LS_CPU"]), float(E["MS_CPU"]), 0.5, "{:,.2f}"),
    row("peak RSS MiB", int(E["LS_RSS"]) / 1024, int(E["MS_RSS"]) / 1024, 0.3, "{:,.1f}"),
    row("restore seconds", float(E["LS_RESTORE_S"]), float(E["MS_RESTORE_S"]), 0.3, "{:,.2f}"),
]
if E.get("LS_NOT_QUIET") == "1":
    # Litestream's steady window still held its first backup: no ratio
    # against it says anything about steady state.
    for r in rows:
        if r["metric"].startswith(("steady state", "one-row")) and r["met"]:
            r["met"] = "n/a (Litestream not quiet)"
for name, key in (("litestream", "LS_RESTORED_ROWS"), ("mailsafe", "MS_RESTORED_ROWS")):
    if not E[key].isdigit():
        rows[-1]["met"] = f"**no** ({name} restore failed)"
checks = {
    "litestream restored rows == source rows": (E["LS_RESTORED_ROWS"], E["LS_ROWS"]),
    "mailsafe restored rows == source rows": (E["MS_RESTORED_ROWS"], E["MS_ROWS"]),
}

def errors(stats):
    return sum(n for code, n in stats.get("status", {}).items() if not code.startswith("2"))


onerow_kb = mo["total"]["bytes_in"] / 1000
notes = [
    f"one-row change, mailsafe: {onerow_kb:,.1f} KB uploaded (target <= 32 KB: "
    f"{'met' if onerow_kb <= 32 else '**not met**'})",
    f"mailsafe `watch` exit code: {E.get('MS_EXIT', '?')} "
    f"({E.get('MS_SNAPSHOTS_STEADY', '?')} snapshots uploaded, first backup included)",
    f"steady-state error responses from S3 (non-2xx): Litestream {errors(ls_)}, mailsafe {errors(ms_)}",
    f"mailsafe in the steady window: {E.get('MS_FULL_SCANS', '?')} full scans (snapshots that hashed every chunk), "
    f"{E.get('MS_WAL_RESETS', '?')} WAL resets, write lock held at most "
    f"{int(E['MS_RESET_MAX_US']) / 1000 if E.get('MS_RESET_MAX_US', '').isdigit() else '-'} ms",
]

if E.get("LS_NOT_QUIET") == "1":
    notes.insert(0, f"**Litestream's first backup had not gone quiet after {E['LS_FIRST_MAX']} s**: its steady-state "
                 "and one-row figures include first-backup work (snapshot and compaction uploads), so they are not "
                 "steady state; its first-backup figures stop at that cap")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    rev = "?"
lines = [
    f"## Backup engine vs Litestream, {int(E['DB_BYTES']) / 2**20:.0f} MiB db (bench/engine.sh)",
    "",
    E.get("BENCH_CONTEXT", ""),
    "",
    f"Run {now} at {rev}: db {int(E['DB_BYTES']) / 2**20:.0f} MiB ({E['BASE_ROWS']} mails, WAL), load "
    f"{E['COUNT']} mails at {E['RATE']}/s then {E['SETTLE']} s settle; Litestream 0.5 `replicate` "
    f"(sync-interval 1s) vs mailsafe "
    + ("`watch`" if E["MODE"] == "watch" else f"`snapshot` once a second ({E['MS_SNAPSHOTS']} runs)")
    + "; same SeaweedFS, each metered by bench/s3proxy (wire bytes incl. headers). "
    "CPU and RSS from /usr/bin/time over all the tool's processes (steady state: the tool's own process, /proc, "
    "counters reset to settle end); restore straight from SeaweedFS. "
    "2 shared cores: timings are noisy.",
    "",
    "| metric | Litestream | mailsafe | ratio | target | met |",
    "|---|---:|---:|---:|---|---|",
]
for r in rows:
    f = r["fmt"]
    lines.append(f"| {r['metric']} | {f.format(r['litestream'])} | {f.format(r['mailsafe'])} | "
                 f"{r['ratio']:.2f} | {r['target']} | {r['met']} |")
lines.append("")
for name, (a, b) in checks.items():
    lines.append(f"- {name}: {a} vs {b} -> {'ok' if a == b else '**MISMATCH**'}")
lines.extend(f"- {n}" for n in notes)
section = "\n".join(lines) + "\n"
print(section)

with open(os.path.join(W, "results.json"), "w") as f:
    json.dump({"rows": rows, "checks": checks, "first": {"litestream": lf, "mailsafe": mf},
               "steady": {"litestream": ls_, "mailsafe": ms_}}, f, indent=1)
