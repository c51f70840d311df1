"""The chat page in real headless Chromium against the real local stack.

Chromium comes from the distribution (``apt-get install chromium``); Playwright drives it, no
downloaded browsers. Without Chromium these tests fail, unless ``SKIP_BROWSER_TESTS=1``.
``UPDATE_SCREENSHOT=1`` rewrites ``docs/screenshot.png`` (it is written anyway when missing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous, for every wait and expect(): a busy 2-core machine; a healthy run never waits it out.
TIMEOUT_MS = 60_000

FIRST = "My name is Ada and I love sci-fi novels"
SECOND = "Recommend a classic I have not read yet"
THIRD = "What do you remember about me?"

USER = '[data-testid="message-user"]'
ASSISTANT = '[data-testid="message-assistant"]'
COMPOSER = '[data-testid="composer"]'
SEND = '[data-testid="send"]'
CONNECTED = '[data-testid="connection-state"][data-state="connected"]'

# Records every visible state of the newest assistant bubble, with the send button's state.
WATCH_REPLIES = """() => {
  window.__replyStates = [];
  const list = document.querySelector('[data-testid="messages"]');
  const record = () => {
    const bubbles = list.querySelectorAll('[data-testid="message-assistant"]');
    const last = bubbles[bubbles.length - 1];
    if (!last) return;
    window.__replyStates.push({
      count: bubbles.length,
      status: last.dataset.status,
      text: last.querySelector('.text').textContent,
      sendDisabled: document.querySelector('[data-testid="send"]').disabled,
    });
  };
  new MutationObserver(record).observe(
    list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def chromium_path() -> str | None:
    """``CHROMIUM_PATH`` when set, else Debian's ``chromium``."""
    configured = os.environ.get("CHROMIUM_PATH")
    candidates = [configured] if configured else [shutil.which("chromium"), "/usr/bin/chromium"]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("SKIP_BROWSER_TESTS") == "1":
            pytest.skip("Chromium is not installed and SKIP_BROWSER_TESTS=1")
        pytest.fail(
            "The browser tests need Debian's Chromium: run `apt-get install chromium` "
            "(or `make test`, which installs it), or set SKIP_BROWSER_TESTS=1 to skip them.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    from playwright.sync_api import expect

    context = chromium.new_context(viewport={"width": 1100, "height": 760}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)  # its own default is 5 s
    page = context.new_page()
    watch_done_frames(page)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def watch_done_frames(page: Any) -> None:
    """Keep the ``done`` frames the page receives (on every socket it opens), to read what
    memory each turn's prompt carried."""
    page.done_frames = []

    def keep(payload: str | bytes) -> None:
        frame = json.loads(payload)
        if isinstance(frame, dict) and frame.get("type") == "done":
            page.done_frames.append(frame)

    page.on("websocket", lambda ws: ws.on("framereceived", keep))


def plain(text: str) -> str:
    """Text without markdown's marks and whitespace, to compare source with rendered text."""
    return re.sub(r"[\s*`#_]", "", text)


def history_turns(page: Any) -> int:
    """How many earlier turns the latest answered turn's prompt carried (its ``done`` frame)."""
    return int(page.done_frames[-1]["usage"]["budget"]["historyTurns"])


def open_chat(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(CONNECTED)


def wait_for_replies(page: Any, count: int) -> str:
    """Wait until ``count`` assistant bubbles exist and the last one is finished; its text."""
    page.wait_for_function(
        """(count) => {
          const bubbles = document.querySelectorAll('[data-testid="message-assistant"]');
          return bubbles.length === count && bubbles[count - 1].dataset.status === 'done';
        }""",
        arg=count,
    )
    return str(page.locator(ASSISTANT).nth(count - 1).locator(".text").text_content())


def test_conversation_streams_remembers_and_survives_a_reload(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    composer, send = page.locator(COMPOSER), page.locator(SEND)
    expect(composer).to_be_focused()
    expect(send).to_be_disabled()  # nothing typed yet

    composer.fill(FIRST)
    composer.press("Enter")
    first = wait_for_replies(page, 1)
    assert first and history_turns(page) == 0
    expect(page.locator(USER).first.locator(".text")).to_have_text(FIRST)

    page.evaluate(WATCH_REPLIES)
    composer.fill(SECOND)
    expect(send).to_be_enabled()
    send.click()
    expect(send).to_be_disabled()  # while the reply streams
    second = wait_for_replies(page, 2)
    assert history_turns(page) == 1, "the prompt should carry the first turn"
    expect(composer).to_be_focused()

    states = page.evaluate("window.__replyStates")
    streaming = [s for s in states if s["count"] == 2 and s["status"] == "streaming"]
    partial = [s for s in streaming if 0 < len(s["text"]) < len(second) and second.startswith(s["text"])]
    assert partial, f"never saw the reply part-way through streaming: {states}"
    assert all(s["sendDisabled"] for s in streaming), "send must be disabled while the reply streams"
    expect(composer).to_have_value("")
    # The live region speaks the reply's source text, the bubble shows it rendered (markdown):
    # the last words spoken are the last words shown.
    spoken = str(page.locator('[data-testid="live"] p').last.text_content())
    last_words = plain(" ".join(spoken.split()[-3:]))
    assert last_words and plain(second).endswith(last_words), "the reply should reach the aria-live region"

    page.reload()
    page.wait_for_selector(CONNECTED)
    expect(page.locator(USER)).to_have_count(2)
    expect(page.locator(ASSISTANT)).to_have_count(2)
    expect(page.locator(USER).nth(0).locator(".text")).to_have_text(FIRST)
    expect(page.locator(USER).nth(1).locator(".text")).to_have_text(SECOND)
    expect(page.locator(ASSISTANT).nth(1).locator(".text")).to_have_text(second)

    composer.fill(THIRD)
    composer.press("Enter")
    assert wait_for_replies(page, 3)
    assert history_turns(page) == 2
    expect(page.locator('[data-testid="memory-mode"]')).to_be_hidden()  # memory is full
    expect(page.locator('[data-testid="error"]')).to_have_count(0)

    if not SCREENSHOT.exists() or os.environ.get("UPDATE_SCREENSHOT") == "1":
        page.mouse.move(0, 0)
        page.locator(COMPOSER).blur()
        # until the entry animations have settled (each has finished, none is still running)
        page.wait_for_function("document.getAnimations().every((a) => a.playState !== 'running')")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))


def test_new_chat_starts_a_fresh_session(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    page.locator(COMPOSER).fill("Remember the word teapot")
    page.locator(COMPOSER).press("Enter")
    wait_for_replies(page, 1)
    before = page.evaluate("localStorage.getItem('chatMemory.sessionId')")
    assert before

    page.locator('[data-testid="new-chat"]').click()
    page.wait_for_selector(CONNECTED)
    expect(page.locator(USER)).to_have_count(0)
    page.locator(COMPOSER).fill("Do you know the word?")
    page.locator(COMPOSER).press("Enter")
    assert wait_for_replies(page, 1) and history_turns(page) == 0
    after = page.evaluate("localStorage.getItem('chatMemory.sessionId')")
    assert after and after != before


def test_the_chats_menu_lists_reopens_and_renames_conversations(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    for n, first in enumerate(("Planning a trip to Lisbon", "Sourdough starter troubles", "Learning Rust")):
        if n:
            page.locator('[data-testid="new-chat"]').click()
            page.wait_for_selector(CONNECTED)
        page.locator(COMPOSER).fill(f"{first}, can you help?")
        page.locator(COMPOSER).press("Enter")
        wait_for_replies(page, 1)

    titles = page.locator('[data-testid="chat-list"] .chat-title')
    menu = page.locator('[data-testid="chats-menu"] > summary')
    menu.click()
    # Titled by the memory worker after each first exchange; the newest first.
    expect(titles).to_have_text(["Learning rust help", "Sourdough starter troubles", "Planning trip lisbon"])
    expect(page.locator('[data-testid="chat-open"][aria-current="true"]')).to_have_count(1)

    page.locator('[data-testid="chat-open"]').nth(2).click()  # the trip
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(USER).first).to_contain_text("Planning a trip to Lisbon, can you help?")
    page.locator(COMPOSER).fill("And Porto?")
    page.locator(COMPOSER).press("Enter")
    wait_for_replies(page, 2)
    page.once("dialog", lambda dialog: dialog.accept("Lisbon and Porto"))
    menu.click()
    expect(titles.first).to_have_text("Planning trip lisbon")  # active last: on top now
    page.locator('[data-testid="chat-rename"]').first.click()
    expect(titles.first).to_have_text("Lisbon and Porto")
    page.reload()
    page.wait_for_selector(CONNECTED)
    expect(page.locator(USER)).to_have_count(2)  # the reopened conversation is the one resumed
    menu.click()
    expect(titles).to_have_text(["Lisbon and Porto", "Learning rust help", "Sourdough starter troubles"])


def test_stop_ends_a_streaming_reply_and_keeps_what_it_said(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    page.locator(COMPOSER).fill("Tell me a long story about lighthouses [offline:slow=0.3]")
    page.locator(COMPOSER).press("Enter")
    stop = page.locator('[data-testid="stop"]')
    expect(stop).to_be_visible()
    expect(page.locator(SEND)).to_be_hidden()
    reply = page.locator(ASSISTANT).last
    expect(reply.locator(".text")).not_to_be_empty()  # it has begun
    stop.click()

    expect(reply).to_have_attribute("data-stopped", "true")
    expect(reply).to_have_attribute("data-status", "done")
    expect(page.locator('[data-testid="info"]').last).to_contain_text("You stopped this reply")
    expect(stop).to_be_hidden()
    shown = plain(str(reply.locator(".text").text_content()))
    page.reload()
    page.wait_for_selector(CONNECTED)
    # Stored as what was shown, no more: the model's stream was closed when it stopped.
    expect(page.locator(ASSISTANT)).to_have_count(1)
    assert plain(str(page.locator(ASSISTANT).first.locator(".text").text_content())) == shown


def test_delete_my_data_erases_everything_and_starts_afresh(stack: Any, page: Any) -> None:
    import boto3
    from boto3.dynamodb.conditions import Key
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    page.locator(COMPOSER).fill("Remember the word marmalade")
    page.locator(COMPOSER).press("Enter")
    wait_for_replies(page, 1)
    before = page.evaluate("localStorage.getItem('chatMemory.sessionId')")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('[data-testid="delete-my-data"]').click()

    expect(page.locator('[data-testid="info"]')).to_contain_text(
        "everything I remembered about you are erased"
    )
    expect(page.locator(USER)).to_have_count(0)
    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    assert table.query(KeyConditionExpression=Key("session_id").eq(before))["Items"] == []
    page.locator(COMPOSER).fill("Do you know the word?")
    page.locator(COMPOSER).press("Enter")
    assert wait_for_replies(page, 1) and history_turns(page) == 0
    after = page.evaluate("localStorage.getItem('chatMemory.sessionId')")
    assert after and after != before


def test_goes_offline_and_reconnects_to_the_same_session(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    page.locator(COMPOSER).fill("Keep this in mind: the code word is heron")
    page.locator(COMPOSER).press("Enter")
    wait_for_replies(page, 1)
    state = page.locator('[data-testid="connection-state"]')

    page.context.set_offline(True)
    expect(state).to_have_attribute("data-state", re.compile("offline|reconnecting"))
    page.locator(COMPOSER).fill("Are you there?")
    expect(page.locator(SEND)).to_be_disabled()  # nothing can be sent while disconnected

    page.context.set_offline(False)
    expect(state).to_have_attribute("data-state", "connected")
    expect(page.locator(USER)).to_have_count(1)  # the history came back once, not twice
    page.locator(SEND).click()
    assert wait_for_replies(page, 2) and history_turns(page) == 1


def test_model_failure_is_shown_in_plain_words(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    page.locator(COMPOSER).fill("Tell me a story [offline:429]")
    page.locator(COMPOSER).press("Enter")
    error = page.locator('[data-testid="error"]')
    expect(error).to_have_count(1)
    assert re.search(r"[a-z]{3,} [a-z]{3,}", error.inner_text()), "the error should be in words"
    expect(page.locator(ASSISTANT)).to_have_attribute("data-status", "failed")
    expect(page.locator(SEND)).to_be_disabled()  # empty composer
    page.locator(COMPOSER).fill("Try again")
    expect(page.locator(SEND)).to_be_enabled()  # not stuck after an error


def test_degraded_memory_is_shown_and_clears_when_it_recovers(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    composer, badge = page.locator(COMPOSER), page.locator('[data-testid="memory-mode"]')
    composer.fill("Remember that my favourite colour is green")
    composer.press("Enter")
    wait_for_replies(page, 1)
    expect(badge).to_be_hidden()

    stack.faults(dynamodb="stall")
    try:
        composer.fill("What is my favourite colour?")
        composer.press("Enter")
        assert wait_for_replies(page, 2)
        assert history_turns(page) == 1  # from the cache
        notice = page.locator('[data-testid="notice"]')
        expect(notice).to_have_count(1)
        assert "memory" in notice.inner_text().lower()
        expect(badge).to_be_visible()
        expect(badge).to_have_text("Memory: cache only")
        # The notice sits between the question and its reply.
        order = page.evaluate(
            """() => Array.from(document.querySelectorAll('[data-testid="messages"] > li'))
                   .map((li) => li.dataset.testid)"""
        )
        assert order[-3:] == ["message-user", "notice", "message-assistant"], order
    finally:
        stack.faults(dynamodb="pass")

    # Once the store answers again (its breaker retries after a moment) the badge goes away:
    # asked again until a reply comes with full memory, however long the breaker takes.
    asked = [0]

    def badge_gone() -> bool:
        asked[0] += 1
        composer.fill(f"Are you back? ({asked[0]})")
        composer.press("Enter")
        wait_for_replies(page, 2 + asked[0])
        return bool(badge.is_hidden())

    wait_until(badge_gone, "full memory again in the page", interval=0.2)
    expect(badge).to_be_hidden()


def test_websocket_url_can_be_configured(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    state = page.locator('[data-testid="connection-state"]')
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"ws://127.0.0.1:{probe.getsockname()[1]}/ws"  # nothing listens there
    # ?ws= wins over the page's own host.
    page.goto(f"{stack.http_url}?ws={nowhere}")
    expect(state).to_have_attribute("data-state", "reconnecting")
    # window.CHAT_WS_URL (set by a script before app.js) is used when there is no ?ws=.
    page.add_init_script(f"window.CHAT_WS_URL = {nowhere!r};")
    page.goto(stack.http_url)
    expect(state).to_have_attribute("data-state", "reconnecting")
    page.goto(f"{stack.http_url}?ws={stack.ws_url}")
    expect(state).to_have_attribute("data-state", "connected")


def test_phone_viewport(stack: Any, chromium: Any) -> None:
    from playwright.sync_api import expect

    context = chromium.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        open_chat(page, stack.http_url)
        composer = page.locator(COMPOSER)
        composer.fill("Hello from my phone, here is a fairly long message to wrap across lines")
        page.locator(SEND).tap()
        wait_for_replies(page, 1)
        expect(composer).to_be_in_viewport(ratio=1)
        expect(page.locator(SEND)).to_be_in_viewport(ratio=1)
        expect(page.locator('[data-testid="new-chat"]')).to_be_in_viewport(ratio=1)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"horizontal scroll on a phone: {widths}"
        box = page.locator(ASSISTANT).first.locator(".bubble").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390
    finally:
        context.close()


def test_memory_menu_picks_a_new_chats_strategy_and_opts_in(stack: Any, page: Any) -> None:
    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    current = page.locator('[data-testid="current-strategy"]')
    page.locator('[data-testid="memory-menu"] > summary').click()
    expect(current).to_have_text("hybrid")
    page.locator('[data-testid="strategy"]').select_option("window")

    page.locator('[data-testid="new-chat"]').click()
    page.wait_for_selector(CONNECTED)
    expect(current).to_have_text("window")
    page.locator(COMPOSER).fill("hello")
    page.locator(COMPOSER).press("Enter")
    wait_for_replies(page, 1)
    expect(current).to_have_text("window")

    long_term = page.locator('[data-testid="long-term"]')
    expect(long_term).not_to_be_checked()
    long_term.check()
    page.wait_for_selector('[data-testid="long-term"][data-server="true"]', state="attached")
    page.reload()  # the server keeps it: checked again after a reload
    page.wait_for_selector(CONNECTED)
    expect(page.locator('[data-testid="long-term"]')).to_be_checked()
    expect(page.locator('[data-testid="forget-all"]')).to_be_hidden()
    assert page.evaluate("localStorage.getItem('chatMemory.strategy')") == "window"


def seed_long_session(stack: Any, session_id: str, principal: str, turns: int) -> None:
    """Write ``turns`` long turns of the session through the real store, into the stack's own
    DynamoDB, as the conversation would have (the message, then the finished reply)."""
    import time

    import boto3
    from chatmemory.storage.turns import TurnStore
    from chatmemory.turns import Turn, Usage

    from tests.support.long_history import REPLY_TOKENS, long_message, long_reply

    table = boto3.resource("dynamodb", endpoint_url=stack.dynamodb_url, region_name="us-east-1").Table(
        "ChatSessions"
    )
    store, now = TurnStore(table), int(time.time())
    for number in range(1, turns + 1):
        expires_at = now + 86_400 + number  # TTLs grow with the turn number, as they do live
        store.put_user_message(
            Turn(session_id=session_id, turn=number, user=long_message(number), at=now, expires_at=expires_at,
                 principal=principal)
        )  # fmt: skip
        usage = Usage(input_tokens=3_000, output_tokens=REPLY_TOKENS)
        store.finish_turn(session_id, number, long_reply(number), "complete", usage, expires_at, 3_000)


def test_a_long_conversation_reopens_a_page_at_a_time(stack: Any, page: Any) -> None:
    import jwt
    from chatmemory.protocol import FRAME_BUDGET_BYTES
    from playwright.sync_api import expect

    from tests.support.long_history import long_message

    turns = 20
    sockets: list[Any] = []
    frame_sizes: list[int] = []

    def watch(ws: Any) -> None:
        sockets.append(ws)
        ws.on(
            "framereceived",
            lambda data: frame_sizes.append(len(data.encode() if isinstance(data, str) else data)),
        )

    page.on("websocket", watch)
    # Given a guest whose session holds 20 turns of 12,000-character messages (some Japanese,
    # larger than a frame alone) and 2,000-token replies
    open_chat(page, stack.http_url)
    session_id = page.evaluate("localStorage.getItem('chatMemory.sessionId')")
    token = page.evaluate("localStorage.getItem('chatMemory.guestToken')")
    principal = jwt.decode(token, options={"verify_signature": False})["sub"]
    seed_long_session(stack, session_id, principal, turns)
    messages, load_earlier = (
        page.locator('[data-testid="messages"]'),
        page.locator('[data-testid="load-earlier"]'),
    )

    # When the page is reloaded
    sockets.clear()
    page.reload()
    page.wait_for_selector(CONNECTED)

    # Then the latest turns show first, on the one socket, with no error, and more to load
    expect(page.locator(USER).last).to_have_attribute("data-turn", str(turns))
    expect(messages).to_have_attribute("data-has-more", "true")
    expect(load_earlier).to_be_visible()
    assert page.evaluate("localStorage.getItem('chatMemory.sessionId')") == session_id
    # And scrolling up, then the "load earlier" control, bring every older turn back
    oldest = int(str(messages.get_attribute("data-oldest")))
    page.locator("#conversation").evaluate("el => { el.scrollTop = 0; }")
    for _ in range(turns):
        page.wait_for_function(
            """(oldest) => {
              const list = document.querySelector('[data-testid="messages"]');
              return Number(list.dataset.oldest) < oldest || list.dataset.hasMore === 'false';
            }""",
            arg=oldest,
        )
        oldest = int(str(messages.get_attribute("data-oldest")))
        if messages.get_attribute("data-has-more") == "false":
            break
        # Not .click(): scrolling the control into view may load the last page itself (as it
        # should) and hide it before the click lands.
        load_earlier.dispatch_event("click")
    expect(load_earlier).to_be_hidden()
    shown = page.locator(USER).evaluate_all(
        "items => items.map((li) => [Number(li.dataset.turn), li.dataset.truncated === 'true',"
        " li.querySelector('.text').textContent])"
    )
    assert [turn for turn, _, _ in shown] == list(range(1, turns + 1))
    for turn, truncated, text in shown:
        assert text == long_message(turn) if not truncated else long_message(turn).startswith(text)
    assert any(truncated for _, truncated, _ in shown), "turns larger than a frame are cut short"

    # And a turn cut short shows all of itself on request
    newest = page.locator(f'{USER}[data-turn="{turns}"]')
    expect(newest).to_have_attribute("data-truncated", "true")
    page.locator(f'[data-turn="{turns}"] [data-testid="show-full"]').click()
    expect(newest).to_have_attribute("data-truncated", "false")
    assert newest.locator(".text").text_content() == long_message(turns)
    expect(page.locator(f'{ASSISTANT}[data-turn="{turns}"] .text')).to_contain_text("End.")

    # And it all came over one socket, no frame over the budget, and nothing went wrong
    expect(page.locator('[data-testid="error"]')).to_have_count(0)
    assert len(sockets) == 1, "the page reconnected"
    assert frame_sizes and max(frame_sizes) <= FRAME_BUDGET_BYTES


def test_a_session_that_cannot_be_loaded_is_said_once_and_never_loops_reconnecting(
    stack: Any, page: Any
) -> None:
    import json

    from playwright.sync_api import expect

    open_chat(page, stack.http_url)
    page.locator(COMPOSER).fill("Remember the word lantern")
    page.locator(COMPOSER).press("Enter")
    wait_for_replies(page, 1)

    # Given a server whose every answer to getSession is an error that a reconnect cannot cure
    # (injected on the wire: the real answer is replaced)
    sockets: list[Any] = []
    refused: list[str] = []
    refusing = [True]

    def route(ws: Any) -> None:
        sockets.append(ws)
        server = ws.connect_to_server()

        def from_server(message: Any) -> None:
            frame = json.loads(message) if isinstance(message, str) else {}
            if refusing[0] and frame.get("type") == "session" and "before" not in frame:
                refused.append(frame["sessionId"])
                message = json.dumps(
                    {
                        "type": "error",
                        "code": "internal",
                        "message": "I can't reach the history.",
                        "requestId": "r1",
                    }
                )
            ws.send(message)

        server.on_message(from_server)

    page.route_web_socket(re.compile(r"/ws(\?|$)"), route)

    # When the page is reloaded
    page.reload()

    # Then it asks again a few times on the same socket, then says so once, offering to retry
    retry = page.locator('[data-testid="retry-session"]')
    expect(retry).to_be_visible(timeout=TIMEOUT_MS)  # after the retries
    expect(page.locator('[data-testid="error"]')).to_have_count(1)
    expect(page.locator('[data-testid="error"]')).to_contain_text("I can't reach the history.")
    expect(page.locator('[data-testid="connection-state"]')).to_have_attribute("data-state", "connected")
    assert len(sockets) == 1, "the page reconnected"
    assert 1 < len(refused) <= 4, refused

    # And once the server can answer, "Try again" brings the conversation back
    refusing[0] = False
    retry.click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator('[data-testid="error"]')).to_have_count(0)
    assert len(sockets) == 1


def test_an_expired_guest_token_becomes_a_new_guest_not_a_dead_page(stack: Any, page: Any) -> None:
    """The page kept a guest token that has since expired (30 days unused): it connects as a new
    guest and says so, rather than retrying a token the server refuses, forever."""
    import jwt
    from playwright.sync_api import expect

    expired = jwt.encode(
        {"iss": "chat-memory:guest", "sub": "guest:gone", "iat": 1, "exp": 2}, "x" * 40, algorithm="HS256"
    )
    page.add_init_script(
        f"localStorage.setItem('chatMemory.guestToken', {expired!r});"
        "localStorage.setItem('chatMemory.sessionId', 'a-session-of-the-old-guest');"
    )
    open_chat(page, stack.http_url)

    expect(page.locator('[data-testid="info"]').filter(has_text="guest session expired")).to_have_count(1)
    token = page.evaluate("localStorage.getItem('chatMemory.guestToken')")
    assert token and token != expired
    assert jwt.decode(token, options={"verify_signature": False})["exp"] > time.time()
    assert page.evaluate("localStorage.getItem('chatMemory.sessionId')") != "a-session-of-the-old-guest"
