#!/usr/bin/env python3
"""Interoperability test of `weir agent` against the published fustor-fusion
0.8.17 (the Python server, from PyPI), over a 20,000-file directory.

1. Writes a Fusion configuration into a scratch FUSTOR_HOME and starts
   `fustor-fusion start` on a free loopback port: one port for everything
   (the receiver's port is Fusion's own, so the session, ingest and views
   routes are all served there); before any agent its views answer 503.
2. Starts `weir agent --url http://127.0.0.1:PORT --key-env ... --root DIR`
   and asserts Fusion's tree equals the directory (paths, sizes, mtimes).
3. Creates, modifies, renames and deletes files, makes a directory with a
   file and removes a directory tree: Fusion's tree follows within seconds.
4. On-demand scan: `tree?on_demand_scan=true` makes a job, Fusion hands the
   agent a `scan` command in a heartbeat answer, the agent scans and sends
   `job_complete`, and the job is COMPLETED; the tree is still right.
5. SIGTERM stops the agent (exit 0), which deletes its session; Fusion
   stops on SIGTERM too.

Fusion's configuration (`$FUSTOR_HOME/fusion-config/default.yaml`): the
root `host`/`port` are the main port; a receiver on that same port is
attached to the main app. The pipe and the view must have the same name:
on the main port the session routes take the ingest key, resolve it to the
key's `pipe_id` and look the session up under that name as a view id (a
pipe named apart from its view gets 419 on its first heartbeat). The agent
heartbeats every third of the session timeout Fusion grants, and scan
commands ride on heartbeat answers: a short timeout hands them out quickly.

Usage: weir_agent_fusion.py --weir target/debug/weir --fusion VENV/bin/fustor-fusion
Prints `weir agent + fustor-fusion interop: N passed, N failed`; exits
non-zero on failure.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # nothing written outside the scratch directory
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fustor_agent import (  # noqa: E402  (the Python agent test's helpers)
    INGEST, QUERY, RESULTS, change_files, check, compare, disk_state, finish, free_port, get, make_tree, tree_state,
    stop, wait_for)

# The view (and the pipe: see above) that `tree_state` and `get` query, with
# QUERY as the view's API key.
VIEW = "default"
# Fusion's session timeout: the agent heartbeats every third of it, and
# that is how often it can pick up an on-demand scan command.
SESSION_TIMEOUT = 6
LABEL = "weir agent + fustor-fusion interop"


def fusion_config(port):
    return (
        "host: 127.0.0.1\n"
        f"port: {port}\n"
        "session_cleanup_interval: 1\n"
        "logging: INFO\n"
        "receivers:\n"
        "  http-main:\n"
        "    driver: http\n"
        "    bind_host: 127.0.0.1\n"
        f"    port: {port}\n"
        "    api_keys:\n"
        f"      - {{key: {INGEST}, pipe_id: {VIEW}}}\n"
        "views:\n"
        f"  {VIEW}:\n"
        "    driver: fs\n"
        f"    api_keys: [{QUERY}]\n"
        "pipes:\n"
        f"  {VIEW}:\n"
        "    receiver: http-main\n"
        f"    views: [{VIEW}]\n"
        f"    session_timeout_seconds: {SESSION_TIMEOUT}\n")


def stop_fusion(fusion, log):
    """SIGTERM to Fusion: it shuts down cleanly (and exits by the same
    signal: uvicorn re-raises the one it caught, so -15 is its clean exit);
    then whatever is left of its process group is killed."""
    if fusion.poll() is None:
        fusion.send_signal(signal.SIGTERM)
        try:
            code = fusion.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fusion.kill()
            code = f"timed out: {fusion.wait()}"
        with open(log, errors="replace") as fh:
            clean = "Application shutdown complete" in fh.read()
        check("fustor-fusion shuts down cleanly on SIGTERM", code in (0, -signal.SIGTERM) and clean,
              f"exit {code}, {'a' if clean else 'no'} clean shutdown in its log")
    try:
        os.killpg(fusion.pid, signal.SIGKILL)
    except OSError:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--fusion", required=True, help="the fustor-fusion executable (of a venv)")
    args = ap.parse_args()
    weir_bin = os.path.abspath(args.weir)
    fusion_bin = os.path.abspath(args.fusion)
    for tool in (weir_bin, fusion_bin):
        if not os.access(tool, os.X_OK):
            check(f"{tool} is executable", False, "not found")
            print(f"{LABEL}: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
            sys.exit(1)

    work = tempfile.mkdtemp(prefix="weir-agent-fusion-interop-")
    data = os.path.join(work, "data")
    state = os.path.join(work, "agent-state")
    home = os.path.join(work, "fusion-home")
    os.makedirs(os.path.join(home, "fusion-config"))
    files = make_tree(data, dirs=100, files_per_dir=200)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(os.path.join(home, "fusion-config", "default.yaml"), "w") as fh:
        fh.write(fusion_config(port))
    fusion_log = open(os.path.join(work, "fusion.out"), "w")
    agent_log = open(os.path.join(work, "agent.log"), "w")
    # Fusion keeps its pid file and logs in FUSTOR_HOME; it runs in the
    # scratch directory so that nothing else is written.
    fusion = subprocess.Popen(
        [fusion_bin, "start"], cwd=work, env=dict(os.environ, FUSTOR_HOME=home, NO_COLOR="1"),
        stdin=subprocess.DEVNULL, stdout=fusion_log, stderr=subprocess.STDOUT, start_new_session=True)
    agent = None

    def follows(what, timeout):
        def probe():
            diffs = compare(disk_state(data), tree_state(base) or {})
            return True if not diffs else "; ".join(diffs[:5])
        return wait_for(what, probe, timeout)

    try:
        def fusion_up():
            if fusion.poll() is not None:
                return f"fustor-fusion exited {fusion.returncode}"
            status, body = get(base, "/")
            return True if status == 200 else f"{status} {body}"
        ok, last = wait_for("fustor-fusion", fusion_up, 60)
        if not check("fustor-fusion starts (one port: receiver, sessions and views)", ok, str(last)):
            return
        status, body = get(base, f"/api/v1/views/{VIEW}/tree?path=/")
        check("before any agent Fusion's tree answers 503 (no leader session)",
              status == 503 and "leader" in json.dumps(body), f"{status} {body}")

        started = time.time()
        agent = subprocess.Popen(
            [weir_bin, "agent", "--url", base, "--key-env", "WEIR_FUSION_INGEST_KEY", "--root", data,
             "--state-dir", state, "--pipe", "interop"],
            env=dict(os.environ, WEIR_FUSION_INGEST_KEY=INGEST, RUST_LOG="info"),
            stdout=agent_log, stderr=subprocess.STDOUT)
        # Fusion answers 503 until the snapshot's end (`is_end`): tree_state
        # is None until then and the comparison waits.
        ok, last = follows("snapshot", 60)
        check(f"weir agent's snapshot of {files} files in Fusion's tree equals the directory "
              f"({time.time() - started:.1f}s)", ok, str(last))

        change_files(data)
        ok, last = follows("realtime", 20)
        check("Fusion's tree follows create, modify, rename, delete, mkdir and rmtree within seconds",
              ok, str(last))

        # On-demand scan: Fusion queues a `scan` command for the session,
        # hands it out in a heartbeat answer; the agent scans and sends
        # `job_complete` with the job id.
        status, tree = get(base, f"/api/v1/views/{VIEW}/tree?path=/proj_0&max_depth=0&on_demand_scan=true")
        job = tree.get("job_id") if status == 200 and isinstance(tree, dict) else None
        check("on_demand_scan=true answers a job id, pending", bool(job) and tree.get("job_pending") is True,
              f"{status} {tree}")
        if job:
            def job_done():
                s, j = get(base, f"/api/v1/views/{VIEW}/jobs/{job}")
                return True if s == 200 and j.get("status") == "COMPLETED" else f"{s} {j}"
            ok, last = wait_for("on-demand job", job_done, 40)
            check("weir agent runs the scan and Fusion's job is COMPLETED", ok, str(last))
        ok, last = follows("after the scan", 20)
        check("after the on-demand scan Fusion's tree still equals the directory", ok, str(last))

        code = stop(agent)
        agent = None
        check("weir agent exits 0 on SIGTERM", code == 0, str(code))
        # Deleted, not expired: at once, well before the session timeout.
        status, body = get(base, f"/api/v1/views/{VIEW}/sessions")
        count = body.get("count") if isinstance(body, dict) else None
        check("its session is deleted: Fusion lists no session", status == 200 and count == 0,
              f"{status}: {count} sessions" if count is not None else f"{status} {body}")
    except Exception as e:  # a crash of the test itself is a failure, reported as one
        check("weir agent fusion interop test ran to the end", False, repr(e))
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        stop_fusion(fusion, os.path.join(work, "fusion.out"))
        fusion_log.close()
        agent_log.close()
        code = finish(work, [], ["fusion.out", "agent.log"], LABEL)
        # Also after an early return from the checks above.
        sys.exit(code)


if __name__ == "__main__":
    main()
