"""Access control (issue 8): who may register, what a registered app can
reach, which ports it may take.

* state dir 0700 and control socket 0660, root-owned; with --allow-uid the
  dir becomes 0711 and the socket 0666, and SO_PEERCRED decides;
* `tas start --allow-uid UID` (repeatable): those uids (and root) register,
  others are disconnected at once;
* an app cannot open another app's (or the stack's) memfds: it holds only
  its own context memfd, and /proc/<pid>/fd of the others is closed to it;
* a port bound by one app is EADDRINUSE for another;
* ports below 1024 need uid 0 or CAP_NET_BIND_SERVICE (CapEff of the
  registering process), unless `tas start --allow-privileged-ports`.

Apps run as inline Python that drops to an unprivileged uid after its
imports (python lives under /root), so SO_PEERCRED and /proc see that uid.
"""

from __future__ import annotations

import os
import stat

import pytest
from test_faults_util import FaultStack, check_transfer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TAP, setuid)"),
]

NOBODY = 65534
OTHER = 65533
CAP_NET_BIND_SERVICE = 10

PROBE = """
UID, CAPS, PORTS = {uid}, {caps!r}, {ports!r}
res = {{"ok": True}}
if UID:
    drop_privileges(UID, CAPS)
try:
    st = Stack(STATE)
    ctx = st.context()
except Exception as e:
    res.update(register=type(e).__name__)
    print("RESULT " + json.dumps(res), flush=True)
    raise SystemExit(0)
res["register"] = "ok"
mem = []
for fd in os.listdir("/proc/self/fd"):
    try:
        t = os.readlink(f"/proc/self/fd/{{fd}}")
    except OSError:
        continue
    if t.startswith("/memfd:"):
        mem.append((t, os.stat(f"/proc/self/fd/{{fd}}").st_ino))
res["memfds"] = sorted({{m[0] for m in mem}})
res["memfd_inodes"] = sorted({{m[1] for m in mem}})
for port in PORTS:
    try:
        ctx.listen(port)
        res[str(port)] = "ok"
    except OSError as e:
        res[str(port)] = errno.errorcode.get(e.errno, str(e.errno))
say("probed")
print("RESULT " + json.dumps(res), flush=True)
{tail}
"""

SNOOP = """
# try to reach other processes' memfds through /proc
res = {"ok": True, "opened": []}
drop_privileges(65534)
for pid in TARGETS:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except PermissionError:
        res.setdefault("denied_list", []).append(pid)
        fds = [str(i) for i in range(64)]
    for fd in fds:
        try:
            f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
        except (PermissionError, FileNotFoundError):
            continue
        res["opened"].append(f"{pid}/{fd}")
        os.close(f)
print("RESULT " + json.dumps(res), flush=True)
"""


def probe(fs, name, uid=0, caps=(), ports=(), tail=""):
    return fs.stack_py(name, PROBE.format(uid=uid, caps=list(caps), ports=list(ports), tail=tail))


def test_default_permissions_root_only():
    with FaultStack() as fs:
        d = os.stat(fs.state_dir)
        s = os.stat(fs.state_dir / "control.sock")
        assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == 0
        assert stat.S_ISSOCK(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o660 and s.st_uid == 0
        assert stat.S_IMODE(os.stat(fs.state_dir / "lock").st_mode) == 0o600
        # root registers; nobody cannot even reach the socket
        assert probe(fs, "root").result(20)["register"] == "ok"
        r = probe(fs, "nobody", uid=NOBODY).result(20)
        assert r["register"] in ("PermissionError", "FileNotFoundError"), r


def test_allow_uid_memfd_isolation_eaddrinuse_privileged_ports():
    with FaultStack(["--allow-uid", str(NOBODY), "--allow-uid", "4242"]) as fs:
        assert stat.S_IMODE(os.stat(fs.state_dir).st_mode) == 0o711
        assert stat.S_IMODE(os.stat(fs.state_dir / "control.sock").st_mode) == 0o666
        # a uid not on the list is refused (SO_PEERCRED), and counted
        r = probe(fs, "other-uid", uid=OTHER).result(20)
        assert r["register"] in ("ConnectionResetError", "BrokenPipeError"), r
        assert fs.stats()["control"]["refused"] == 1
        # app A (root) holds port 8080 and stays up; app B (nobody) tries it,
        # a privileged port, and an ordinary one
        a = probe(fs, "app-a", ports=[8080, 80], tail="time.sleep(60)")
        a.wait_line("probed", 20)
        b = probe(fs, "app-b", uid=NOBODY, ports=[8080, 81, 8081], tail="time.sleep(60)")
        b.wait_line("probed", 20)
        ra = _result_line(a)
        rb = _result_line(b)
        assert ra["8080"] == "ok" and ra["80"] == "ok"  # root may take privileged ports
        assert rb["register"] == "ok"
        assert rb["8080"] == "EADDRINUSE"
        assert rb["81"] == "EACCES"
        assert rb["8081"] == "ok"
        # B holds exactly one memfd: its own context
        assert len(rb["memfd_inodes"]) == 1 and len(rb["memfds"]) == 1, rb
        assert "tas-ctx" in rb["memfds"][0]
        assert not set(rb["memfd_inodes"]) & set(ra["memfd_inodes"])
        # nobody cannot open A's, the slow path's or the fast path's memfds
        snoop = fs.stack_py("snoop", f"TARGETS = {[a.pid, fs.pid, *fs.fp_pids()]!r}\n" + SNOOP).result(20)
        assert snoop["opened"] == [], snoop
        # CAP_NET_BIND_SERVICE is enough for a privileged port, as on Linux
        rc = probe(fs, "nobody-cap", uid=NOBODY, caps=[CAP_NET_BIND_SERVICE], ports=[82]).result(20)
        assert rc["82"] == "ok", rc
        assert fs.stats()["control"]["privileged_port_denied"] >= 1
        a.stop()
        b.stop()


def test_allow_privileged_ports_and_data_path_for_unprivileged_app():
    with FaultStack(["--allow-uid", str(NOBODY), "--allow-privileged-ports"]) as fs:
        r = probe(fs, "nobody-80", uid=NOBODY, ports=[80]).result(20)
        assert r["80"] == "ok", r
        # and an unprivileged app moves data like any other
        app = fs.stack_py("nobody-echo", """
            drop_privileges(65534)
            st = Stack(STATE); ctx = st.context(); lst = ctx.listen(443)
            say("listening")
            c = lst.accept(timeout=15)
            h = hashlib.sha256(); n = 0
            while True:
                d = c.recv(65536, timeout=20)
                if not d:
                    break
                h.update(d); n += len(d)
            c.close()
            print("RESULT " + json.dumps({"ok": True, "rx_bytes": n, "rx_sha256": h.hexdigest()}), flush=True)
        """, ready="listening")
        cli = fs.linux_peer("client", 443, script="send,close", send_bytes=1 << 20, seed=71, timeout=30)
        rx = app.result(30)
        check_transfer(cli.result(30), rx, 1 << 20, 71)


def _result_line(app) -> dict:
    import json

    line = app.wait_line("RESULT ", 20)
    return json.loads(line[len("RESULT "):])
