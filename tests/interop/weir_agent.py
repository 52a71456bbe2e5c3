#!/usr/bin/env python3
"""Interoperability test of `weir agent` against `weir serve`, both the built
binaries, over a 20,000-file directory.

1. Starts `weir serve` and `weir agent --root DIR`.
2. Asserts the tree equals the directory (paths, sizes, mtimes).
3. Creates, modifies, renames and deletes files, makes a directory with a
   file and removes a directory tree: the tree follows within seconds.
4. Kills `weir serve` (SIGKILL) and starts it again on the same port: the
   agent finds its session gone, makes a new one, and the tree is right
   again; a change made while the server was down is there too.
5. `weir agent status` shows the agent in realtime; SIGTERM stops the agent
   (its session deleted: the views answer 503).
6. A permission-denied subtree: an agent that may not read one directory
   (as `nobody` when the test runs as root) syncs everything else, lists
   the directory without its contents, reports it unwatched, and follows
   changes elsewhere.

Usage: weir_agent.py --weir target/debug/weir
Prints `weir agent interop: N passed, N failed`; exits non-zero on failure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fustor_agent import (  # noqa: E402  (the Python agent test's helpers)
    INGEST, QUERY, ADMIN, RESULTS, change_files, check, compare, disk_state, finish, free_port, get, make_tree,
    stop, tree_state, wait_for)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    args = ap.parse_args()
    weir_bin = os.path.abspath(args.weir)
    if not os.access(weir_bin, os.X_OK):
        check(f"{weir_bin} is executable", False, "not found")
        print(f"weir agent interop: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
        sys.exit(1)

    work = tempfile.mkdtemp(prefix="weir-agent-interop-")
    data = os.path.join(work, "data")
    state = os.path.join(work, "agent-state")
    files = make_tree(data, dirs=100, files_per_dir=200)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, WEIR_INGEST_KEY=INGEST, WEIR_QUERY_KEY=QUERY, WEIR_ADMIN_KEY=ADMIN,
               RUST_LOG="info")
    weir_log = open(os.path.join(work, "weir.log"), "a")
    agent_log = open(os.path.join(work, "agent.log"), "w")

    def start_weir():
        return subprocess.Popen(
            [weir_bin, "serve", "--listen", f"127.0.0.1:{port}", "--ephemeral"],
            env=env, stdout=weir_log, stderr=subprocess.STDOUT)

    def follows(what, timeout):
        def probe():
            diffs = compare(disk_state(data), tree_state(base) or {})
            return True if not diffs else "; ".join(diffs[:5])
        return wait_for(what, probe, timeout)

    weir = start_weir()
    agent = None
    try:
        ok, _ = wait_for("weir", lambda: get(base, "/healthz")[0] == 200 if weir.poll() is None else "exited", 120)
        if not check("weir serve starts", ok):
            return
        started = time.time()
        agent = subprocess.Popen(
            [weir_bin, "agent", "--url", base, "--root", data, "--state-dir", state, "--pipe", "interop"],
            env=env, stdout=agent_log, stderr=subprocess.STDOUT)
        ok, last = follows("snapshot", 120)
        check(f"weir agent's snapshot of {files} files equals the directory "
              f"({time.time() - started:.1f}s to READY)", ok, str(last))

        change_files(data)
        ok, last = follows("realtime", 20)
        check("the tree follows create, modify, rename, delete, mkdir and rmtree within seconds", ok, str(last))

        weir.kill()
        weir.wait()
        with open(os.path.join(data, "while_down.txt"), "w") as fh:
            fh.write("made while the server was down\n")
        weir = start_weir()
        ok, last = follows("after the restart", 120)
        check("after weir serve is killed and started again, the agent re-syncs and the tree is right",
              ok, str(last))

        def status_shows():
            out = subprocess.run([weir_bin, "agent", "--state-dir", state, "--pipe", "interop", "status"],
                                 capture_output=True, text=True, timeout=30)
            try:
                status = json.loads(out.stdout)
            except ValueError:
                status = {}
            if out.returncode == 0 and status.get("state") == "realtime" and status.get("sessions", 0) >= 2:
                return True
            return f"{out.returncode} {out.stdout} {out.stderr}"
        ok, last = wait_for("status", status_shows, 10)  # it is written every 2 s
        check("weir agent status shows it in realtime after two sessions", ok, str(last))

        code = stop(agent)
        agent = None
        check("weir agent exits 0 on SIGTERM", code == 0, str(code))
        status, body = get(base, "/api/v1/views/default/stats")
        check("its session is deleted: the views answer 503", status == 503, f"{status} {body}")

        # A subtree the agent may not read.
        secret = os.path.join(data, "secret")
        os.makedirs(os.path.join(secret, "inner"))
        for name in ("a.txt", os.path.join("inner", "b.txt")):
            with open(os.path.join(secret, name), "w") as fh:
                fh.write("not for the agent\n")
        os.chmod(secret, 0o700)
        state2 = os.path.join(work, "agent-state-2")
        os.makedirs(state2)
        prefix = []
        if os.geteuid() == 0:
            # Root reads everything: the agent runs as nobody instead.
            for d, _, names in os.walk(work):
                if not d.startswith(secret):
                    os.chmod(d, 0o755)
            os.chmod(state2, 0o777)
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        agent = subprocess.Popen(
            prefix + [weir_bin, "agent", "--url", base, "--root", data, "--state-dir", state2,
                      "--pipe", "interop"],
            env=env, stdout=agent_log, stderr=subprocess.STDOUT)

        def without_secret():
            want = {p: v for p, v in disk_state(data).items() if not p.startswith("/secret/")}
            diffs = compare(want, tree_state(base) or {})
            return True if not diffs else "; ".join(diffs[:5])
        ok, last = wait_for("unreadable subtree", without_secret, 120)
        check("with a directory it may not read, the agent syncs the rest (the directory listed, "
              "its contents not)", ok, str(last))
        with open(os.path.join(data, "proj_3", "after_secret.txt"), "w") as fh:
            fh.write("followed\n")
        ok, last = wait_for("realtime beside the unreadable subtree", without_secret, 20)
        check("and follows changes elsewhere", ok, str(last))

        def unwatched():
            try:
                status = json.load(open(os.path.join(state2, "status-interop.json")))
            except (OSError, ValueError) as e:
                return repr(e)
            return True if status.get("unwatched_dirs", 0) >= 1 else json.dumps(status)
        ok, last = wait_for("unwatched count", unwatched, 10)
        check("its status counts the directory it cannot watch", ok, str(last))
        log = open(os.path.join(work, "agent.log")).read()
        check("the agent log names the unreadable directory", "secret" in log and "ermission denied" in log,
              log[-2000:])
        code = stop(agent)
        agent = None
        check("that agent exits 0 on SIGTERM", code == 0, str(code))
    except Exception as e:  # a crash of the test itself is a failure, reported as one
        check("weir agent interop test ran to the end", False, repr(e))
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        weir_log.close()
        agent_log.close()
        code = finish(work, [("weir serve", weir)], ["weir.log", "agent.log"], "weir agent interop")
        # Also after an early return from the checks above.
        sys.exit(code)

if __name__ == "__main__":
    main()
