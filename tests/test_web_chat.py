"""``llamantino chat --web`` end to end: the tiny model, trained by the real command, served by the real
command, talked to in a real headless browser (Debian's Chromium through Selenium). Greedy answers
are deterministic, so the page must show exactly what the model itself answers, turn by turn: that
checks the history and the system prompt box reach the model, not only that text appears."""

from __future__ import annotations

import re

import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from browser import chromium, require_browser
from conftest import PYTHON, ROOT, cli

# one worker trains the model that all three tests share
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("chat")]  # shares the default job's run

QUESTION = "Qual è la capitale d'Italia?"  # in the training data: "La capitale d'Italia è Roma."
FOLLOW_UP = "Quanto fa 12 per 7?"
SERVING = "llamantino chat: serving "


@pytest.fixture(scope="module")
def browser_ready() -> None:
    """Checked before the model is trained: no browser, no point training for it."""
    require_browser()


@pytest.fixture(scope="module")
def trained_run(default_job) -> Path:
    """The default job's run (tiny Llama, the Italian instructions, anita template): it answers them."""
    return default_job[1]


@pytest.fixture(scope="module")
def expected(trained_run) -> dict:
    """What the model answers, loaded here on the CPU as the server will be: the conversation the page
    must reproduce (the question; a follow-up that sees it; the question again with no system prompt)."""
    from llamantino.chat.model import ChatModel, resolve_target

    model = ChatModel(resolve_target(trained_run), "cpu")

    def turns(*pairs):
        return [{"role": role, "content": text} for pair in pairs for role, text in zip(("user", "assistant"), pair)]

    first = model.answer([], QUESTION).strip()
    second = model.answer(turns((QUESTION, first)), FOLLOW_UP).strip()
    so_far = turns((QUESTION, first), (FOLLOW_UP, second))
    third = model.answer(so_far, QUESTION, "").strip()
    # The page must give exactly these; they tell a dropped history or system prompt apart only when
    # the model answers differently without them (greedy; how often depends on the training).
    return {"answers": [first, second, third], "system": model.default_system, "label": model.target.label}


class Server:
    """``python -m llamantino chat RUN --web --port 0`` in its own process; its stdout read line by line."""

    def __init__(self, run_dir: Path, log: Path):
        self.log = log
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "llamantino", "chat", str(run_dir), "--web", "--port", "0", "--device", "cpu"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.stdout.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def url(self, timeout: float = 180) -> str:
        """The address from the serving line, once the server says it listens."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no serving line within {timeout:g} s\n{self.log.read_text()[-3000:]}")
            if line is None:
                raise AssertionError(f"the server ended (exit {self.process.wait()}) before serving\n"
                                     f"stdout: {self.stdout}\n{self.log.read_text()[-3000:]}")
            if line.startswith(SERVING):
                return line.split(" at ", 1)[1].split(" ", 1)[0]

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C, as a user stops it; the exit code."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def normalised(text: str) -> str:
    return " ".join(text.split())


def chat_input(browser):
    """The message box: the textarea next to the submit button (the system prompt box is another)."""
    from selenium.webdriver.common.by import By

    return browser.find_element(By.XPATH, "//button[@data-testid='submit-button']/ancestor::*[.//textarea][1]//textarea")


def send(browser, wait, server: Server, message: str, answers_before: int, expected_answer: str) -> str:
    """Type a message, press Enter, wait for the streamed answer to be complete; its text as the model
    wrote it: the message's accessible name (the page renders Markdown: "15." shows as a list)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = chat_input(browser)
    box.send_keys(message)
    box.send_keys(Keys.ENTER)

    def answer():
        bots = browser.find_elements(By.CSS_SELECTOR, "[data-testid='bot']")
        if len(bots) <= answers_before:
            return None
        return normalised(bots[answers_before].get_attribute("aria-label").removeprefix("bot's message: "))

    try:  # the page streams the answer in; it is done when it is all there and the submit button is back
        wait.until(lambda _: answer() == normalised(expected_answer)
                   and browser.find_element(By.CSS_SELECTOR, "[data-testid='submit-button']").is_displayed())
    except Exception as exc:
        raise AssertionError(f"after {message!r} the page shows {answer()!r}, the model answers "
                             f"{expected_answer!r}\nserver log:\n{server.log.read_text()[-3000:]}") from exc
    return answer()


def test_web_chat_answers_in_a_real_browser_as_the_model_does(browser_ready, trained_run, expected, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from llamantino_plugin.templates import template_info

    first, second, third = expected["answers"]
    assert first, "the model answers nothing to its training question"
    server = Server(trained_run, tmp_path / "server.log")
    try:
        url = server.url()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/"), url
        with chromium() as browser:
            browser.get(url)
            wait = WebDriverWait(browser, 120)
            wait.until(lambda _: chat_input(browser).is_displayed())
            # the header: the run's name (its title), its template, its folder's name but not its path, greedy
            page = browser.find_element(By.TAG_NAME, "body").text
            label = expected["label"]
            assert browser.title == label
            assert label in page and trained_run.name in page and "anita" in page and "greedy" in page, page
            assert str(trained_run.parent) not in page

            assert send(browser, wait, server, QUESTION, 0, first) == normalised(first)
            shown = browser.find_element(By.CSS_SELECTOR, "[data-testid='bot']").text  # shown, not only sent
            assert all(word in shown for word in re.findall(r"[^\W\d_]{4,}", first)), (shown, first)
            assert send(browser, wait, server, FOLLOW_UP, 1, second) == normalised(second)  # the history went too
            # the system prompt box holds what the model was trained with: anita's published prompt
            browser.find_element(By.XPATH, "//button[.//*[normalize-space(text())='System prompt']]").click()
            system_box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#system-prompt textarea"))
            assert system_box.get_attribute("value") == template_info("anita").system_prompt == expected["system"]
            browser.execute_script("arguments[0].scrollIntoView()", system_box)
            screenshot = tmp_path / "web_chat.png"
            assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
            if os.environ.get("LLAMANTINO_ARTEFACTS"):
                artefacts = Path(os.environ["LLAMANTINO_ARTEFACTS"])
                artefacts.mkdir(parents=True, exist_ok=True)
                shutil.copy(screenshot, artefacts / screenshot.name)
            # emptied, the next message goes without a system prompt
            system_box.send_keys(Keys.CONTROL, "a")
            system_box.send_keys(Keys.DELETE)
            assert system_box.get_attribute("value") == ""
            assert send(browser, wait, server, QUESTION, 2, third) == normalised(third)
        assert server.stop() == 0, server.log.read_text()[-3000:]
        assert server.stdout == [f"{SERVING}{label} at {url} (Ctrl-C stops it)"]  # one line, nothing else
    finally:
        server.kill()


def test_web_chat_bad_options_are_refused_before_loading(trained_run, tmp_path):
    for args, error in [(("--port", "70000"), "error: --port=70000 must be between 0 and 65535"),
                        (("--prompt", "x"), "error: --web and --prompt do not go together: --prompt answers once "
                                            "in the terminal")]:
        proc = cli(str(trained_run), "--web", *args, verb="chat", cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.strip().splitlines() == [error] and proc.stdout == "", (args, proc.stdout, proc.stderr)


def test_web_chat_refuses_a_taken_port_in_one_line(trained_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(str(trained_run), "--web", "--port", str(port), "--device", "cpu", verb="chat", cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --port={port} on 127.0.0.1 is in use by another program; give another --port, "
                      f"or --port 0 for any free one"], proc.stderr
    assert SERVING not in proc.stdout
