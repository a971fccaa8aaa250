"""The web chat page in headless Chromium: type a message, click Send, watch the streamed reply appear.

Driven through the Chrome DevTools Protocol (tests/serve/cdp.py, stdlib websocket). The page's
reply (greedy, temperature set to 0 in the page) must equal the API's non-streaming reply to the
same message, arrive in several DOM updates, and the server must have logged a streaming request.

    python -m pytest -q tests/serve/test_web_page.py
"""

from __future__ import annotations

import shutil

import pytest

from cdp import CHROMIUM, Browser
from serve_helpers import API_KEY, MODEL_NAME

MESSAGE = "Hello! Who are you?"
MAX_TOKENS = 16

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium")


def type_into(page, element_id: str, text: str) -> None:
    page.evaluate(f"document.getElementById({element_id!r}).focus()")
    page.call("Input.insertText", text=text)


def click(page, element_id: str) -> None:
    box = page.evaluate(f"(() => {{ const r = document.getElementById({element_id!r}).getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        page.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


def test_page_streams_a_reply(live_server, client, server_log):
    expected = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": MESSAGE}],
                                              max_tokens=MAX_TOKENS, temperature=0).choices[0].message.content
    assert expected.strip(), "the greedy reply of the test model is not empty"
    with Browser() as browser:
        page = browser.page()
        page.call("Page.navigate", url=live_server.base_url + "/")
        page.wait_for("document.readyState === 'complete' && !!document.getElementById('send')")
        type_into(page, "api-key", API_KEY)  # the server requires a key; the page sends it as a bearer token
        page.evaluate("document.getElementById('api-key').dispatchEvent(new Event('change'))")
        page.wait_for(f"document.getElementById('model').textContent === {MODEL_NAME!r}")
        page.evaluate(f"document.getElementById('temperature').value = '0';"
                      f"document.getElementById('max-tokens').value = '{MAX_TOKENS}';"
                      "window.updates = 0; new MutationObserver(() => window.updates++).observe("
                      "document.getElementById('messages'), {subtree: true, childList: true, characterData: true});")
        type_into(page, "input", MESSAGE)
        click(page, "send")
        page.wait_for("document.querySelector('.msg.assistant') && document.querySelector('.msg.assistant').dataset.done === '1'")
        reply = page.evaluate("document.querySelector('.msg.assistant .body').textContent")
        user = page.evaluate("document.querySelector('.msg.user').textContent")
        updates = page.evaluate("window.updates")
        errors = page.evaluate("document.querySelectorAll('.msg.error').length")
    assert user == MESSAGE and errors == 0
    assert reply == expected
    assert updates >= 4, "user bubble, reply bubble, then the reply grew piece by piece"
    assert any(line.startswith("chat.completions") and "stream=True" in line for line in server_log.lines)
