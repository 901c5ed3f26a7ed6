"""The spark-infer command line, on a tiny random model: generate, info, errors, and the
interactive chat driven through a pseudo-terminal."""

from __future__ import annotations

import signal
import subprocess
import sys

import pexpect
import pytest

from tiny_model import write_tiny_model

CLI = [sys.executable, "-m", "spark_infer.cli"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "tiny.spark")
    write_tiny_model(path)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)


def test_generate_prints_text_and_speed(model_path):
    r = run("generate", "Ruth said", "-m", model_path, "-n", "12", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    assert "prefill:" in r.stderr and "decode:" in r.stderr and "tokens/s" in r.stderr
    again = run("generate", "Ruth said", "-m", model_path, "-n", "12", "--temperature", "0")
    assert again.stdout == r.stdout  # greedy is deterministic


def test_info(model_path):
    r = run("info", model_path)
    assert r.returncode == 0, r.stderr
    assert "gemma3" in r.stdout and "dense GeGLU FFN" in r.stdout and "F32" in r.stdout
    assert "matrices:" in r.stdout   # the matrix types and their counts


@pytest.mark.parametrize("args, message", [
    (["generate", "x", "--temperature", "-1"], "temperature"),
    (["generate", "x", "--top-p", "2"], "top_p"),
    (["generate", "x", "--repeat-last-n", "-5"], "repeat_last_n"),
    (["generate", "x", "--frequency-penalty", "3"], "frequency_penalty"),
    (["generate", "x", "--presence-penalty", "nan"], "presence_penalty"),
    (["chat", "--presence-penalty", "-2.5"], "presence_penalty"),
    (["generate", "x" * 5000, "-c", "64"], "context"),
    (["info", "/no/such/file.spark"], "No such file"),
])
def test_errors_are_one_line_and_nonzero(model_path, args, message):
    if args[0] in ("generate", "chat"):
        args = args + ["-m", model_path]
    r = run(*args)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_model_file():
    r = run("generate", "x", "-m", "/no/such/model.spark")
    assert r.returncode == 2 and "no such model file" in r.stderr and "Traceback" not in r.stderr


def _chat(model_path: str, *extra: str) -> pexpect.spawn:
    # SIGINT back to its default in the child: a runner started in the background (nohup ... &)
    # ignores it, the child would inherit that, and Ctrl-C would never reach the chat.
    child = pexpect.spawn(CLI[0], CLI[1:] + ["chat", "-m", model_path, "--temperature", "0",
                                             *extra], encoding="utf-8", timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect("> ")
    return child


def _exit(child: pexpect.spawn) -> None:
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_two_turns_reset_exit(model_path):
    child = _chat(model_path, "-n", "6")
    child.sendline("Who is Naomi?")
    child.expect("decode:")          # the answer streamed, then the speed line
    child.expect("> ")
    child.sendline("And Ruth?")
    child.expect("prefill: (\\d+) tokens")
    assert int(child.match.group(1)) < 30  # the second turn prefills only its new tokens
    child.expect("> ")
    child.sendline("/reset")
    child.expect("conversation cleared")
    child.expect("> ")
    _exit(child)


def test_chat_eof_exits_zero(model_path):
    child = _chat(model_path, "-n", "4")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_ctrl_c_stops_the_answer_and_keeps_the_session(model_path):
    child = _chat(model_path, "-n", "100000", "-c", "60000", "--min-p", "0")
    child.sendline("Tell me everything.")
    child.expect("everything\\.\r\n")  # the terminal's echo of the line
    child.expect(".", timeout=60)     # the answer has started streaming
    child.sendintr()
    child.expect("stopped")
    child.expect("> ")
    _exit(child)


def test_generate_with_penalties(model_path):
    common = ["generate", "Ruth said", "-m", model_path, "-n", "24", "--temperature", "0"]
    plain = run(*common)
    penalized = run(*common, "--repetition-penalty", "3", "--repeat-last-n", "-1",
                    "--frequency-penalty", "1", "--presence-penalty", "1")
    assert plain.returncode == 0 and penalized.returncode == 0, penalized.stderr
    assert penalized.stdout.strip() and penalized.stdout != plain.stdout
    mapped = run(*common, "--mmap")   # the same bytes, mapped: the same greedy text
    assert mapped.returncode == 0, mapped.stderr
    assert mapped.stdout.split("\nprefill:")[0] == plain.stdout.split("\nprefill:")[0]


def test_chat_outgrowing_the_context_keeps_the_session(model_path):
    child = _chat(model_path, "-n", "8", "-c", "64", "--system", "Be brief.")
    dropped = False
    for i in range(8):
        child.sendline(f"Question {i}: who is Naomi, and where did Ruth glean?")
        k = child.expect(["dropped the \\d+ oldest message", "decode:"])
        if k == 0:
            dropped = True
            child.expect("decode:")   # the answer still comes
        child.expect("> ")
    assert dropped
    child.sendline("Ruth " * 120)     # one message longer than the whole context
    child.expect("not sent: .*context")
    child.expect("> ")
    child.sendline("And Boaz?")       # the session goes on
    child.expect("decode:")
    child.expect("> ")
    _exit(child)
