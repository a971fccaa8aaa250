"""`genlab chat` in a real pseudo-terminal, and `genlab eval --json`, against the quick speedrun's model."""

import json
import os
import pty
import select
import subprocess
import sys
import time


def read_until(fd: int, marker: bytes, timeout: float = 60.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {marker!r}; got {data[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_chat_streams_a_reply_in_a_terminal(quick_run):
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "genlab.cli.main", "chat", str(quick_run / "model"),
                                  "--max-tokens", "12", "--system", "Answer briefly."])
    try:
        banner = read_until(fd, b"you> ")
        assert b"genlab chat" in banner
        os.write(fd, b"What is 12 + 30?\n")
        reply = read_until(fd, b"you> ")
        assert b"bot> " in reply
        answer = reply.split(b"bot> ", 1)[1].split(b"you> ")[0].strip()
        assert answer, reply  # the model said something (12 tokens at most), then the prompt came back
        os.write(fd, b"/exit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)


def test_eval_json_prints_one_object(quick_run):
    out = subprocess.run([sys.executable, "-m", "genlab.cli.main", "eval", str(quick_run / "model"), "--json",
                          "--limit", "5", "--world-scale", "0.25", "--bpb-bytes", "20000",
                          "--out", str(quick_run / "eval_cli.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip())
    assert set(result["accuracy"]) == {"qa_new_phrasings", "knowledge_extraction", "addition_2digit", "idk",
                                       "json_valid"}
    assert all(0.0 <= v <= 1.0 for v in result["accuracy"].values())
    assert result["bpb"] > 0
    assert (quick_run / "eval_cli.json").is_file()


def test_eval_rejects_unknown_task(quick_run):
    out = subprocess.run([sys.executable, "-m", "genlab.cli.main", "eval", str(quick_run / "model"),
                          "--task", "poetry"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown task" in out.stderr and "Traceback" not in out.stderr
