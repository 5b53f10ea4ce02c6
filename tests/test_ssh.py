"""SSH transport against a real sshd on 127.0.0.1 (targets/ssh_loopback.py, throwaway keys, private known_hosts):
probe, push/run/pull, the agent, strict host keys, hostile names, cleanup, retries (the timeout kill on the board
is in test_transport_conformance.py)."""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, TransportError
from targets.device import facts_from_probe, normalise_arch
from targets.transport import run_agent

from .boards import loopback, ssh_fields, start_loopback  # noqa: F401
from .test_transport import _tiny_model_and_golden


@pytest.fixture()
def board(loopback, tmp_path):
    from targets.transports.ssh import SshTransport

    with SshTransport(**ssh_fields(loopback), workdir=str(tmp_path / "board")) as t:
        yield t
    assert not Path(t.run_dir).exists() and not Path(t.run_dir + ".ctl").exists()  # close removed them on the board


def test_setup_is_idempotent_and_records_a_usable_device(loopback):
    again = start_loopback(loopback["cache"])
    assert again["reused"] is True and again["port"] == loopback["port"] and again["pid"] == loopback["pid"]
    record = json.loads((Path(loopback["folder"]) / "device.json").read_text())
    assert record["host"] == "127.0.0.1" and record["known_hosts"].startswith(loopback["folder"])
    kh = Path(record["known_hosts"]).read_text().split()
    assert kh[0] == f"[127.0.0.1]:{record['port']}" and kh[1] == "ssh-ed25519"
    assert oct(Path(record["identity_file"]).stat().st_mode & 0o777) == "0o600"


def test_probe_reads_the_board(board):
    from targets.device import probe_snippet

    # the probe program as Transport.probe sends it, with two runtimes only (importing TensorFlow takes seconds;
    # the full probe runs in the end-to-end build, tests/test_ssh_e2e.py)
    out = board.run([board.python, "-c", probe_snippet({"numpy": "numpy", "onnxruntime": "onnxruntime"})], 60)
    facts = facts_from_probe(json.loads(out.stdout.splitlines()[-1]), transport="ssh")
    assert facts.arch == normalise_arch(platform.machine()) and facts.transport == "ssh"
    assert facts.cores >= 1 and facts.python == platform.python_version()
    assert "onnxruntime" in facts.runtimes  # the board's Python is the one that ran the setup


def test_push_run_pull_round_trip(board, tmp_path):
    src = tmp_path / "src dir"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.txt").write_text("hello ü")
    remote_dir = board.push(src, "bundle/in")
    assert remote_dir == f"{board.run_dir}/bundle/in"
    script = ("import pathlib, os, sys; pathlib.Path('out.txt').write_text(pathlib.Path(sys.argv[1]).read_text()"
              ".upper() + os.environ['EDGEPIPE_T'])")
    result = board.run([board.python, "-c", script, "bundle/in/sub/data.txt"], timeout_s=60,
                       env={"EDGEPIPE_T": "$(x) 'q'"})
    assert result.returncode == 0, result.stderr
    board.pull("out.txt", tmp_path / "back" / "out.txt")
    assert (tmp_path / "back" / "out.txt").read_text() == "HELLO Ü$(x) 'q'"
    board.pull(remote_dir, tmp_path / "back_dir")
    assert (tmp_path / "back_dir" / "sub" / "data.txt").read_text() == "hello ü"
    code = board.run(["sh", "-c", "echo out; echo err >&2; exit 7"], timeout_s=30)
    assert (code.returncode, code.stdout, code.stderr) == (7, "out\n", "err\n")
    with pytest.raises(TransportError, match="cannot pull .*no such file"):
        board.pull("absent.txt", tmp_path / "x")


def test_hostile_argv_reaches_the_board_literally(board, tmp_path):
    words = ["$(touch pwned)", "a; touch pwned", "`touch pwned`", "x'y\"z", "-n", "new\nline", "ünï cødé", "*",
             "~", "a\\b", "&& touch pwned", "| touch pwned", "> pwned", "${HOME}", "\t", " "]
    result = board.run([board.python, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *words],
                       timeout_s=30)
    assert json.loads(result.stdout) == words
    assert board.run(["ls", "-A"], timeout_s=30).stdout.split() == []  # nothing was created


HOSTILE_NAMES = ["a; rm -rf x", "$(touch pwned)", "../x", "/etc/passwd", "a/../../x", "-rf", "a/-b", "", "a//b",
                 "`touch pwned`", "model.onnx\n", "a\n/b", "a b", "ü.onnx", "x\x00y", "'q'", '"q"', "a|b", "a&b",
                 "--help", "~/x", "*", "$HOME"]


def test_hostile_remote_names_are_refused(board, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    for name in HOSTILE_NAMES:
        with pytest.raises(TransportError, match="remote name"):
            board.push(src, name)
        with pytest.raises(TransportError):
            board.pull(name, tmp_path / "got")
    assert not any(Path(board.run_dir).iterdir()) and not (tmp_path / "got").exists()
    assert not (Path.home() / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_symlink_out_of_the_run_dir_is_refused(board, tmp_path):
    (tmp_path / "secret.txt").write_text("s")
    board.run(["ln", "-s", str(tmp_path), "link"], timeout_s=30)
    with pytest.raises(TransportError, match="outside the run dir"):
        board.pull("link/secret.txt", tmp_path / "stolen.txt")
    board.push(tmp_path / "secret.txt", "link/planted.txt")  # queued; refused on the board before the next run
    with pytest.raises(TransportError, match=r"cannot push secret\.txt to 'link/planted\.txt' .*: outside the run dir"):
        board.run(["true"], timeout_s=30)
    assert not (tmp_path / "stolen.txt").exists() and not (tmp_path / "planted.txt").exists()


def test_run_agent_profiles_a_tiny_onnx_model_over_ssh(board, tmp_path):
    model, golden = _tiny_model_and_golden(tmp_path)
    args = ["--model", board.push(model, "model/relu.onnx"), "--format", "onnx", "--threads", "1", "--warmup", "2",
            "--iterations", "25", "--golden", board.push(golden, "golden")]
    result = run_agent(board, args, timeout_s=120, threads=1)
    assert result["ok"] and result["agent_exit_code"] == 0 and result["golden"]["passed"] == 1
    assert len(result["samples_ms"]) == 25 and result["latency_ms"]["min"] <= result["latency_ms"]["p50"]
    assert board.agent_remote == f"{board.run_dir}/edgepipe_agent.py"


def test_a_vanished_host_leaves_nothing_on_the_board(loopback, tmp_path):
    from targets.transports.ssh import SshTransport

    t = SshTransport(**ssh_fields(loopback), workdir=str(tmp_path / "board"))
    run_dir = Path(t.run_dir)
    assert run_dir.is_dir()
    t._master.kill()  # the build process dies: its connection drops without any cleanup command
    t._master.wait()
    deadline = time.monotonic() + 15
    # the board's session removes the run dir, then the control dir beside it: wait for both
    while (run_dir.exists() or Path(f"{run_dir}.ctl").exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not run_dir.exists() and not Path(f"{run_dir}.ctl").exists()
    t.close()


def _other_key_line(loopback, tmp_path) -> str:
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return f"[127.0.0.1]:{loopback['port']} {' '.join(key.with_suffix('.pub').read_text().split()[:2])}\n"


@pytest.mark.parametrize("case", ["unknown", "changed"])
def test_unknown_or_changed_host_key_is_refused_in_one_line(loopback, tmp_path, case):
    from targets.transports.ssh import SshTransport

    known = tmp_path / "known_hosts"
    known.write_text("" if case == "unknown" else _other_key_line(loopback, tmp_path))
    before = known.read_text()
    with pytest.raises(TransportError) as err:
        SshTransport(**ssh_fields(loopback, known_hosts=str(known)), workdir=str(tmp_path / "board"), retries=3)
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{loopback['port']}" in message and str(known) in message
    assert ("host key unknown" if case == "unknown" else "host key CHANGED") in message
    assert "attempts" not in message  # a key problem is never retried
    assert known.read_text() == before  # never accepted into the file
    assert not (tmp_path / "board").exists()  # nothing ran on the board


def _counting_listener():
    """A TCP port that accepts and at once closes every connection (a board whose sshd is not up yet)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    seen = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            seen.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, seen


def test_connection_failures_are_retried_with_backoff(loopback, tmp_path, monkeypatch):
    from targets.transports import ssh

    waits = []
    monkeypatch.setattr(ssh, "_sleep", waits.append)
    server, seen = _counting_listener()
    try:
        with pytest.raises(TransportError, match=r"connect failed: .*\(after 3 attempts\)$") as err:
            ssh.SshTransport(**ssh_fields(loopback, port=server.getsockname()[1]), retries=2, retry_backoff_s=0.5)
    finally:
        server.close()
    assert len(seen) == 3 and waits == [0.5, 1.0] and "\n" not in str(err.value)
    with socket.socket() as s:  # a port nobody listens on: connection refused, tried twice
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(TransportError, match=r"Connection refused \(after 2 attempts\)$"):
        ssh.SshTransport(**ssh_fields(loopback, port=free), retries=1, retry_backoff_s=0.25)
    assert waits == [0.5, 1.0, 0.25]


def test_wrong_client_key_is_refused_without_retry(loopback, tmp_path):
    from targets.transports.ssh import SshTransport

    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(TransportError, match=r"the key .*stranger was refused \(Permission denied\)"):
        SshTransport(**ssh_fields(loopback, identity_file=str(key)), retries=2, retry_backoff_s=0)


def test_profile_with_setup_name_uses_the_device_record(loopback, tmp_path, monkeypatch):
    from pipeline.config import load_profile
    from pipeline.devices import open_transport

    profile = load_profile("ssh-loopback-onnx-int8", tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(loopback["cache"]))
    with open_transport(profile.transport, tmp_path) as t:
        assert (t.port, t.python, t.retries) == (loopback["port"], loopback["python"], 2)
        assert t.run(["echo", "ok"], timeout_s=30).stdout == "ok\n"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    with pytest.raises(TransportError, match=r"device 'ssh-loopback' is not set up .* run `edgepipe device setup "
                                             r"ssh-loopback`"):
        open_transport(profile.transport, tmp_path)


def test_profile_paths_expand_vars_and_relative_to_the_release(loopback, tmp_path, monkeypatch):
    from targets.transports.ssh import SshTransport

    folder = Path(loopback["folder"])
    monkeypatch.setenv("EDGEPIPE_TEST_KEYS", str(folder))
    with SshTransport(**ssh_fields(loopback, identity_file="$EDGEPIPE_TEST_KEYS/client_key",
                                   known_hosts="known_hosts"), base_dir=str(folder)) as t:
        assert t.identity_file == str(folder / "client_key") and t.known_hosts == str(folder / "known_hosts")
    with pytest.raises(TransportError, match="identity_file '\\$EDGEPIPE_UNSET_X/k': an environment variable"):
        SshTransport(**ssh_fields(loopback, identity_file="$EDGEPIPE_UNSET_X/k"))


def test_ssh_profile_needs_a_host_or_a_setup(tmp_path):
    from pipeline.config import load_profile

    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\nformat: onnx\nprecision: fp32\ntransport: {kind: ssh, identity_file: k}\n")
    with pytest.raises(ConfigError, match="needs host, identity_file and known_hosts"):
        load_profile(str(bad), tmp_path)
    bad.write_text("name: p\nformat: onnx\nprecision: fp32\ntransport: {kind: ssh, host: '-oProxyCommand', "
                   "identity_file: k, known_hosts: h}\n")
    with pytest.raises(ConfigError, match="transport.ssh.host"):
        load_profile(str(bad), tmp_path)


def test_example_device_profiles_load():
    from pipeline.config import load_profile

    folder = Path(__file__).resolve().parent.parent / "examples" / "devices"
    board = load_profile(str(folder / "board-ssh.yaml"), folder)
    phone = load_profile(str(folder / "phone-adb.yaml"), folder)
    assert board.transport.kind == "ssh" and board.required and board.transport.retries == 3
    assert phone.transport.kind == "adb" and phone.transport.python is None and phone.transport.benchmark_binary
