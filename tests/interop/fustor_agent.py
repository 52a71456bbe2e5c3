#!/usr/bin/env python3
"""Interoperability test: the published fustor-agent 0.8.17 syncs a directory
into `weir serve`, unchanged.

1. Generates a directory of a few thousand files (old mtimes, random sizes).
2. Starts `weir serve` on a free loopback port and the agent against it.
3. Waits for the views to be ready and asserts the tree equals the
   directory: every path, size and mtime.
4. Creates, modifies, renames and deletes files and asserts the tree follows
   within seconds.
5. A crash: 12,000 more files, a fresh agent, and `weir serve` killed with
   SIGKILL while that agent's snapshot is being applied, then started again
   on the same port; the agent finds its session unknown (419), creates a
   new one and sends its snapshot again, and the tree must equal the
   directory.
6. Kills the agent and asserts the views answer 503 after the session timeout.

Usage: fustor_agent.py --weir target/debug/weir --agent VENV/bin/fustor-agent
Prints a closing line `interop: N passed, N failed`; exits non-zero on failure.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

INGEST, QUERY, ADMIN = "interop-ingest", "interop-query", "interop-admin"
SESSION_TIMEOUT = 6
RESULTS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base, path):
    req = urllib.request.Request(base + path, headers={"X-API-Key": QUERY})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body.decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        return 0, str(e)


def rows_applied(base):
    """The default datastore's applied rows from /metrics, or -1."""
    req = urllib.request.Request(base + "/metrics", headers={"X-API-Key": QUERY})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith('weir_datastore_rows_applied_total{datastore="default"}'):
                    return int(line.rsplit(" ", 1)[1])
    except (OSError, ValueError):
        pass
    return -1


def wait_for(what, predicate, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last is True:
            return True, None
        time.sleep(0.25)
    return False, last


def make_tree(root, dirs=30, files_per_dir=100):
    rng = random.Random(7)
    old = time.time() - 7200
    count = 0
    for d in range(dirs):
        sub = os.path.join(root, f"proj_{d // 10}", f"run_{d % 10}")
        os.makedirs(sub, exist_ok=True)
        for f in range(files_per_dir):
            path = os.path.join(sub, f"file_{f:03d}.dat")
            with open(path, "wb") as fh:
                fh.write(os.urandom(rng.randint(0, 4096)))
            t = old + rng.random() * 1000
            os.utime(path, (t, t))
            count += 1
    # Directory mtimes old too, so that nothing is "hot".
    for dirpath, _, _ in os.walk(root, topdown=False):
        os.utime(dirpath, (old, old))
    return count


def disk_state(root):
    """{relative path: (is_dir, size, mtime)} of everything below root."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            st = os.stat(full)
            is_dir = os.path.isdir(full)
            state[rel] = (is_dir, None if is_dir else st.st_size, st.st_mtime)
    return state


def tree_state(base):
    status, tree = get(base, "/api/v1/views/default/tree?path=/")
    if status != 200:
        return None
    state = {}
    stack = list(tree.get("children", []))
    while stack:
        node = stack.pop()
        is_dir = node["content_type"] == "directory"
        state[node["path"]] = (is_dir, None if is_dir else node["size"], node["modified_time"])
        stack.extend(node.get("children", []))
    return state


def compare(disk, tree):
    """A list of differences (empty when equal); directory mtimes are not compared."""
    diffs = []
    for path in sorted(set(disk) | set(tree)):
        if path not in tree:
            diffs.append(f"missing in tree: {path}")
        elif path not in disk:
            diffs.append(f"extra in tree: {path}")
        else:
            d, t = disk[path], tree[path]
            if d[0] != t[0] or d[1] != t[1] or (not d[0] and abs(d[2] - t[2]) > 1e-3):
                diffs.append(f"differs: {path}: disk {d} tree {t}")
    return diffs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--agent", required=True)
    args = ap.parse_args()
    # The agent runs in a scratch directory: relative paths would break.
    args.weir = os.path.abspath(args.weir)
    args.agent = os.path.abspath(args.agent)
    for tool in (args.weir, args.agent):
        if not os.access(tool, os.X_OK):
            check(f"{tool} is executable", False, "not found")
            print(f"interop: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
            sys.exit(1)

    work = tempfile.mkdtemp(prefix="weir-interop-")
    data = os.path.join(work, "data")
    home = os.path.join(work, "home")
    os.makedirs(os.path.join(home, "agent-config"))
    files = make_tree(data)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, WEIR_INGEST_KEY=INGEST, WEIR_QUERY_KEY=QUERY, WEIR_ADMIN_KEY=ADMIN, RUST_LOG="info")
    weir_log = open(os.path.join(work, "weir.log"), "w")
    def start_weir():
        return subprocess.Popen(
            [args.weir, "serve", "--listen", f"127.0.0.1:{port}", "--session-timeout-secs", str(SESSION_TIMEOUT),
             "--data-dir", os.path.join(work, "weir-data")],
            env=env, stdout=weir_log, stderr=subprocess.STDOUT)
    weir = start_weir()
    with open(os.path.join(home, "agent-config", "default.yaml"), "w") as fh:
        fh.write(
            "sources:\n  data:\n    driver: fs\n    uri: " + json.dumps(data) + "\n"
            "senders:\n  weir:\n    driver: fusion\n    uri: " + json.dumps(base) + "\n"
            "    credential:\n      key: " + INGEST + "\n"
            "pipes:\n  interop:\n    source: data\n    sender: weir\n")
    agent_log = open(os.path.join(work, "agent.log"), "w")
    agent = None
    try:
        ok, _ = wait_for("weir", lambda: get(base, "/healthz")[0] == 200 if _alive(weir) else "weir exited", 120)
        if not check("weir serve starts", ok):
            return
        agent = subprocess.Popen([args.agent, "start"], cwd=work, env=dict(os.environ, FUSTOR_HOME=home),
                                 stdout=agent_log, stderr=subprocess.STDOUT, start_new_session=True)

        def synced():
            status, stats = get(base, "/api/v1/views/default/stats")
            if status != 200:
                return f"{status} {stats}"
            return True if stats["total_files"] == files else f"{stats['total_files']} of {files} files"
        ok, last = wait_for("snapshot", synced, 120)
        check(f"agent snapshot of {files} files reaches the views", ok, str(last))

        diffs = compare(disk_state(data), tree_state(base) or {})
        check("tree equals the directory (paths, sizes, mtimes)", not diffs, "; ".join(diffs[:5]))

        # Realtime changes.
        created = os.path.join(data, "proj_0", "run_0", "created.txt")
        with open(created, "w") as fh:
            fh.write("new file\n")
        modified = os.path.join(data, "proj_1", "run_1", "file_001.dat")
        with open(modified, "ab") as fh:
            fh.write(b"appended bytes")
        renamed_from = os.path.join(data, "proj_2", "run_2", "file_002.dat")
        renamed_to = os.path.join(data, "proj_2", "run_2", "renamed.dat")
        os.rename(renamed_from, renamed_to)
        deleted = os.path.join(data, "proj_0", "run_3", "file_003.dat")
        os.remove(deleted)
        newdir = os.path.join(data, "fresh_dir")
        os.mkdir(newdir)
        time.sleep(1.5)  # let the watcher add the new directory before filling it
        with open(os.path.join(newdir, "inner.txt"), "w") as fh:
            fh.write("inside\n")

        def follows():
            diffs = compare(disk_state(data), tree_state(base) or {})
            return True if not diffs else "; ".join(diffs[:5])
        ok, last = wait_for("realtime", follows, 20)
        check("tree follows create, modify, rename, delete and mkdir within seconds", ok, str(last))

        # On-demand scan: the agent obeys the heartbeat's `scan` command and
        # reports the job complete.
        status, tree = get(base, "/api/v1/views/default/tree?path=/proj_0&max_depth=0&on_demand_scan=true")
        job = tree.get("job_id") if status == 200 and isinstance(tree, dict) else None
        check("on_demand_scan=true makes a pending job", bool(job) and tree.get("job_pending") is True,
              f"{status} {tree}")

        def job_done():
            s, j = get(base, f"/api/v1/views/default/jobs/{job}")
            return True if s == 200 and j.get("status") == "COMPLETED" else f"{s} {j}"
        ok, last = wait_for("on-demand job", job_done, 40)
        check("the fustor-agent runs the scan and the job is COMPLETED", ok, str(last))

        # Crash: a larger tree, a fresh agent (new session, new snapshot),
        # and weir killed with SIGKILL while that snapshot is applied, then
        # started again on the same port: the agent gets 419, creates a new
        # session and sends its snapshot again.
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        more = make_tree(os.path.join(data, "bulk"), dirs=30, files_per_dir=400)
        files = sum(len(names) for _, _, names in os.walk(data))
        agent = subprocess.Popen([args.agent, "start"], cwd=work, env=dict(os.environ, FUSTOR_HOME=home),
                                 stdout=agent_log, stderr=subprocess.STDOUT, start_new_session=True)
        before = rows_applied(base)
        deadline = time.time() + 60
        applied = rows_applied(base)
        while applied <= before and time.time() < deadline:
            time.sleep(0.02)
            applied = rows_applied(base)
        weir.kill()
        weir.wait()
        done = applied - before
        check(f"weir killed with SIGKILL during the agent's snapshot ({done} of {files} files applied)",
              0 < done < files, f"{done} rows applied: not in the middle of the snapshot ({more} files added)")
        weir = start_weir()
        ok, _ = wait_for("weir again", lambda: get(base, "/healthz")[0] == 200 if _alive(weir) else "weir exited", 120)
        check("weir serve starts again on the same port", ok)
        ok, last = wait_for("snapshot after the crash", synced, 180)
        check(f"after the crash the agent re-syncs: its snapshot of {files} files reaches the views", ok, str(last))
        diffs = compare(disk_state(data), tree_state(base) or {})
        check("after the crash the tree equals the directory", not diffs, "; ".join(diffs[:5]))

        # Kill the agent: after the session timeout, views are unavailable.
        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        killed_at = time.time()
        agent = None

        def unavailable():
            status, body = get(base, "/api/v1/views/default/stats")
            return True if status == 503 else f"{status}"
        ok, last = wait_for("503", unavailable, SESSION_TIMEOUT + 15)
        waited = time.time() - killed_at
        check(f"views answer 503 after the agent dies (after {waited:.1f}s)", ok, str(last))
        status, body = get(base, "/api/v1/views/default/tree?path=/")
        check("503 says why", status == 503 and "no live agent session" in json.dumps(body), f"{status} {body}")
    except Exception as e:  # a crash of the test itself is a failure, reported as one
        check("interop test ran to the end", False, repr(e))
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        weir_log.close()
        agent_log.close()
        code = finish(work, [("weir", weir)], ["weir.log", "agent.log"], "interop")
        # Also after an early return from the checks above.
        sys.exit(code)

def stop(proc, timeout=15):
    """SIGTERM to `proc`; its exit code, or "timed out" (then it is killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return "timed out"


def change_files(data):
    """The realtime changes the agent tests make in a tree from make_tree:
    create, modify (append), rename, delete, a new directory with a file
    inside, and a removed directory tree."""
    with open(os.path.join(data, "proj_0", "run_0", "created.txt"), "w") as fh:
        fh.write("new file\n")
    with open(os.path.join(data, "proj_1", "run_1", "file_001.dat"), "ab") as fh:
        fh.write(b"appended bytes")
    os.rename(os.path.join(data, "proj_2", "run_2", "file_002.dat"),
              os.path.join(data, "proj_2", "run_2", "renamed.dat"))
    os.remove(os.path.join(data, "proj_0", "run_3", "file_003.dat"))
    os.makedirs(os.path.join(data, "fresh", "deeper"))
    with open(os.path.join(data, "fresh", "deeper", "inner.txt"), "w") as fh:
        fh.write("inside\n")
    shutil.rmtree(os.path.join(data, "proj_4", "run_4"))


def finish(work, servers, logs, label):
    """Ends a run: SIGTERM each `(name, process)` of `servers` and checks it
    exits 0; on failure prints the last lines of each log file in `logs`
    (names in `work`), else removes `work`; prints the closing line and
    returns the exit code."""
    for name, proc in servers:
        proc.send_signal(signal.SIGTERM)
        try:
            check(f"{name} exits 0 on SIGTERM", proc.wait(timeout=20) == 0)
        except subprocess.TimeoutExpired:
            proc.kill()
            check(f"{name} exits 0 on SIGTERM", False, "timed out")
    if RESULTS["failed"]:
        for name in logs:
            print(f"--- last lines of {name}")
            with open(os.path.join(work, name), errors="replace") as fh:
                print("".join(fh.readlines()[-30:]))
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{label}: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


def _alive(proc):
    return proc.poll() is None


if __name__ == "__main__":
    main()
