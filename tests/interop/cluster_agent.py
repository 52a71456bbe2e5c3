#!/usr/bin/env python3
"""Interoperability test of a cluster: the published fustor-agent 0.8.17
syncs a directory through host A of two `weir serve` hosts on a 3-node NATS
JetStream cluster, and host B serves it.

1. Starts three `nats-server` nodes (JetStream, one cluster, loopback) and
   two `weir serve --nats ...` hosts, A and B.
2. Subscribes to `fs.changes` on B, then starts the agent against A with a
   3,000-file directory.
3. Asserts B's views equal the directory (every path, size and mtime).
4. Creates, modifies and deletes files: B's views follow, and B's
   subscriber sees each change once (not once per host).
5. Kills the agent: after the session timeout every host answers 503.
6. SIGTERM: both hosts exit 0.

Usage: cluster_agent.py --weir target/debug/weir --agent VENV/bin/fustor-agent
                        --nats-server VENV/bin/nats-server
Prints `cluster interop: N passed, N failed`; exits non-zero on failure.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fustor_agent import (  # noqa: E402  (the single-host test's helpers)
    INGEST, QUERY, ADMIN, SESSION_TIMEOUT, RESULTS, check, compare, disk_state, finish,
    free_port, get, make_tree, tree_state, wait_for)


def start_nats(binary, work):
    """Three JetStream nodes in one cluster; returns (processes, client URLs)."""
    clients = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    route_urls = ",".join(f"nats://127.0.0.1:{p}" for p in routes)
    procs = []
    for i in range(3):
        log = open(os.path.join(work, f"nats-{i}.log"), "w")
        procs.append(subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(clients[i]), "-n", f"n{i}", "-js",
             "-sd", os.path.join(work, f"nats-{i}"), "--cluster_name", "interop",
             "--cluster", f"nats://127.0.0.1:{routes[i]}", "--routes", route_urls],
            stdout=log, stderr=subprocess.STDOUT))
    return procs, [f"nats://127.0.0.1:{p}" for p in clients]


class Changes(threading.Thread):
    """Reads `fs.changes` envelopes from a host's NDJSON stream."""

    def __init__(self, base):
        super().__init__(daemon=True)
        self.base, self.events, self.error = base, [], None
        self.subscribed = threading.Event()

    def run(self):
        req = urllib.request.Request(self.base + "/v1/keys/fs.changes/stream",
                                     headers={"X-API-Key": QUERY, "Accept": "application/x-ndjson"})
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                for line in resp:
                    item = json.loads(line)
                    if item.get("notice") == "subscribed":
                        self.subscribed.set()
                    elif "data" in item:
                        self.events.append(item)
        except Exception as e:  # reported by the checks that need the events
            self.error = repr(e)

    def count(self, kind, suffix):
        return sum(1 for e in self.events
                   if e["data"]["kind"] == kind and e["data"]["path"].endswith(suffix))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--nats-server", required=True)
    args = ap.parse_args()
    for tool in (args.weir, args.agent, args.nats_server):
        if not os.access(tool, os.X_OK):
            check(f"{tool} is executable", False, "not found")
            print(f"cluster interop: {RESULTS['passed']} passed, {RESULTS['failed']} failed")
            sys.exit(1)
    args.weir, args.agent = os.path.abspath(args.weir), os.path.abspath(args.agent)

    work = tempfile.mkdtemp(prefix="weir-cluster-interop-")
    data = os.path.join(work, "data")
    home = os.path.join(work, "home")
    os.makedirs(os.path.join(home, "agent-config"))
    files = make_tree(data, dirs=30, files_per_dir=100)
    nats, urls = start_nats(args.nats_server, work)
    env = dict(os.environ, WEIR_INGEST_KEY=INGEST, WEIR_QUERY_KEY=QUERY, WEIR_ADMIN_KEY=ADMIN,
               RUST_LOG="info")
    hosts = {}

    def start_weir(name):
        port = free_port()
        log = open(os.path.join(work, f"weir-{name}.log"), "a")
        proc = subprocess.Popen(
            [args.weir, "serve", "--listen", f"127.0.0.1:{port}", "--ephemeral",
             "--nats", ",".join(urls), "--cluster-name", "interop", "--retention-bytes", "67108864",
             "--session-timeout-secs", str(SESSION_TIMEOUT)],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        return proc, f"http://127.0.0.1:{port}"

    agent = None
    agent_log = open(os.path.join(work, "agent.log"), "w")
    try:
        for name in ("A", "B"):
            # The NATS cluster may still be electing its JetStream leader: a
            # host that cannot make its streams exits, and is started again.
            deadline = time.time() + 90
            while True:
                proc, base = start_weir(name)
                ok, _ = wait_for(f"weir {name}", lambda: get(base, "/healthz")[0] == 200
                                 if proc.poll() is None else "exited", 30)
                if ok or time.time() > deadline:
                    break
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            hosts[name] = (proc, base)
            if not check(f"weir serve {name} joins the cluster", ok):
                return
        a, b = hosts["A"][1], hosts["B"][1]

        changes = Changes(b)
        changes.start()
        check("B's fs.changes subscriber is subscribed", changes.subscribed.wait(30), str(changes.error))

        with open(os.path.join(home, "agent-config", "default.yaml"), "w") as fh:
            fh.write(
                "sources:\n  data:\n    driver: fs\n    uri: " + json.dumps(data) + "\n"
                "senders:\n  weir:\n    driver: fusion\n    uri: " + json.dumps(a) + "\n"
                "    credential:\n      key: " + INGEST + "\n"
                "pipes:\n  interop:\n    source: data\n    sender: weir\n")
        agent = subprocess.Popen([args.agent, "start"], cwd=work, env=dict(os.environ, FUSTOR_HOME=home),
                                 stdout=agent_log, stderr=subprocess.STDOUT, start_new_session=True)

        def synced(base):
            def probe():
                status, stats = get(base, "/api/v1/views/default/stats")
                if status != 200:
                    return f"{status} {stats}"
                return True if stats["total_files"] == files else f"{stats['total_files']} of {files}"
            return probe
        started = time.time()
        ok, last = wait_for("snapshot on B", synced(b), 120)
        check(f"the agent's snapshot of {files} files through A reaches B's views "
              f"({time.time() - started:.1f}s)", ok, str(last))
        diffs = compare(disk_state(data), tree_state(b) or {})
        check("B's tree equals the directory (paths, sizes, mtimes)", not diffs, "; ".join(diffs[:5]))
        ok, last = wait_for("snapshot on A", synced(a), 30)
        check("A's views agree", ok, str(last))
        inserts = changes.count("insert", ".dat")
        check(f"B's subscriber saw each snapshot file once ({inserts} fs.insert of {files})",
              inserts == files, f"{inserts}")

        created = os.path.join(data, "proj_0", "run_0", "created.txt")
        with open(created, "w") as fh:
            fh.write("new file\n")
        modified = os.path.join(data, "proj_1", "run_1", "file_001.dat")
        with open(modified, "ab") as fh:
            fh.write(b"appended bytes")
        os.remove(os.path.join(data, "proj_0", "run_3", "file_003.dat"))

        def follows():
            diffs = compare(disk_state(data), tree_state(b) or {})
            return True if not diffs else "; ".join(diffs[:5])
        ok, last = wait_for("realtime on B", follows, 30)
        check("B's views follow create, modify and delete made under the agent of A", ok, str(last))
        ok, last = wait_for("changes on B", lambda: True if changes.count("insert", "created.txt") >= 1
                            and changes.count("delete", "file_003.dat") >= 1 else "not yet", 15)
        time.sleep(1)  # let any duplicate arrive
        check("B's fs.changes subscriber sees the realtime changes, each once",
              ok and changes.count("insert", "created.txt") == 1 and changes.count("delete", "file_003.dat") == 1,
              f"{last}; created.txt inserts {changes.count('insert', 'created.txt')}, "
              f"file_003.dat deletes {changes.count('delete', 'file_003.dat')}")

        os.killpg(agent.pid, signal.SIGKILL)
        agent.wait()
        agent = None
        killed_at = time.time()

        def everywhere_503():
            statuses = [get(base, "/api/v1/views/default/stats")[0] for base in (a, b)]
            return True if statuses == [503, 503] else str(statuses)
        ok, last = wait_for("503", everywhere_503, SESSION_TIMEOUT + 15)
        check(f"after the agent dies every host answers 503 ({time.time() - killed_at:.1f}s)", ok, str(last))
        status, body = get(b, "/api/v1/views/default/tree?path=/")
        check("B's 503 says why", status == 503 and "no live agent session" in json.dumps(body), f"{status} {body}")
    except Exception as e:  # a crash of the test itself is a failure, reported as one
        check("cluster interop test ran to the end", False, repr(e))
    finally:
        if agent is not None and agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
        agent_log.close()
        servers = [(f"weir {name}", proc) for name, (proc, _) in hosts.items()]
        code = finish(work, servers, ["weir-A.log", "weir-B.log", "agent.log"], "cluster interop")
        for n in nats:
            n.kill()
            n.wait()
        # Also after an early return from the checks above.
        sys.exit(code)

if __name__ == "__main__":
    main()
