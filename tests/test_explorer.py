"""The attention explorer (`s2s-attn serve`, GET /) in a real browser: headless Chromium.

`.ci/run` installs Debian's `chromium` and `chromium-driver` where they are
missing; Selenium (the `dev` extra) drives them. The test skips, saying so,
only where no Chromium can be found.
"""

import os
import shutil
import time
import urllib.parse

import numpy as np
import pytest

from keras_s2s_attn import export
from keras_s2s_attn.serving import MODELS
from keras_s2s_attn.translation import Translator
from tests.serving_fixtures import Server, export_strategies

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium: pip install -e .[dev]")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory):
    """(browser, server, Python translator, download folder) over the tiny model."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser: apt-get install chromium chromium-driver")
    base = tmp_path_factory.mktemp("explorer") / "reverser"
    export.export_saved_model(tiny_run, base, strategies=export_strategies())
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    browser = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    browser.execute_cdp_cmd("Page.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})
    server = Server(base, max_request_bytes=64 * 1024, max_batch_size=8)
    try:
        yield (browser, server, Translator.from_run(tiny_run, strategies=export_strategies()),
               downloads)
    finally:
        browser.quit()
        server.close()


def open_page(browser, url):
    browser.get(url)
    wait_for_state(browser, ("ready", "done"))


def wait_for_state(browser, states, seconds=60):
    WebDriverWait(browser, seconds).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in states)


def translate_by_keyboard(browser, *lines):
    """Types the lines into the text box (Shift+Enter between them) and presses Enter."""
    box = browser.find_element(By.ID, "text")
    box.clear()
    for index, line in enumerate(lines):
        box.send_keys(line)
        box.send_keys(Keys.SHIFT + Keys.ENTER if index < len(lines) - 1 else Keys.ENTER)
    wait_for_state(browser, ("done",))


def real_length(tokens):
    return max((i + 1 for i, token in enumerate(tokens) if token), default=0)


def test_two_inputs_show_translations_maps_and_hover_links(page, tmp_path):
    browser, server, translator, _ = page
    open_page(browser, server.url("/"))
    assert browser.find_element(By.ID, "model-name").text == "reverser"
    assert browser.find_element(By.ID, "model-version").text == "1"
    assert browser.find_element(By.ID, "signatures").text == (
        "serving_default, beam_search, sample")
    texts = ["abc", "hgfed"]
    translate_by_keyboard(browser, *texts)
    expected = translator(texts)
    results = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert [r.find_element(By.CLASS_NAME, "translation").text for r in results] == [
        t.decode() for t in expected["translation"]]
    assert not browser.find_element(By.ID, "error").is_displayed()
    for row, result in enumerate(results):
        source = real_length(expected["source_tokens"][row])
        target = real_length(expected["target_tokens"][row])
        assert (source, target) == (len(texts[row]), len(texts[row]) + 1)  # chars, then </s>
        assert len(result.find_elements(By.CSS_SELECTOR, "rect.cell")) == target * source
        labels = result.find_elements(By.CSS_SELECTOR, "text.source-label")
        assert [label.text for label in labels] == list(texts[row])
        # Hovering each target token highlights the source token it attended to most.
        weights = expected["attention"][row][:target, :source]
        for t in range(target):
            ActionChains(browser).move_to_element(
                result.find_element(By.CSS_SELECTOR, f'text.target-label[data-t="{t}"]')).perform()
            marked = {int(label.get_attribute("data-s")) for label in labels
                      if "hl" in label.get_attribute("class").split()}
            assert int(np.argmax(weights[t])) in marked, (row, t, marked)
        # And the reverse: a source token marks the target tokens that attended to it most.
        s = int(np.argmax(weights[0]))
        ActionChains(browser).move_to_element(labels[s]).perform()
        marked = {int(label.get_attribute("data-t")) for label in result.find_elements(
            By.CSS_SELECTOR, "text.target-label.hl")}
        assert 0 in marked
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.current_url).query)
    assert query == {"q": ["abc\nhgfed"]}
    assert browser.save_screenshot(str(tmp_path / "explorer.png"))
    assert (tmp_path / "explorer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_beam_n_best_and_a_url_that_reproduces_the_view(page):
    browser, server, translator, _ = page
    open_page(browser, server.url("/?" + urllib.parse.urlencode(
        {"q": "dcba", "strategy": "beam_search"})))
    wait_for_state(browser, ("done",))
    expected = translator(["dcba"], "beam_search")
    items = browser.find_elements(By.CSS_SELECTOR, ".nbest li")
    assert [item.text.rsplit(" (", 1)[0] for item in items] == [
        t.decode() for t in expected["translations"][0]]
    scores = [float(item.text.rsplit(" (", 1)[1].rstrip(")")) for item in items]
    np.testing.assert_allclose(scores, expected["scores"][0], atol=1e-3)
    # Sampling's inputs appear as fields; a bad one is refused on the page, naming it.
    select = browser.find_element(By.ID, "signature")
    select.find_element(By.CSS_SELECTOR, 'option[value="sample"]').click()
    names = [i.get_attribute("name") for i in browser.find_elements(By.CSS_SELECTOR,
                                                                    "#parameters input")]
    assert names == ["seed", "temperature", "top_k", "top_p"]
    browser.find_element(By.CSS_SELECTOR, '#parameters input[name="top_k"]').send_keys("1.5")
    browser.find_element(By.ID, "translate").click()
    assert browser.find_element(By.ID, "error").text == 'top_k must be an integer; got "1.5".'


def test_server_errors_read_on_the_page(page):
    browser, server, _, _ = page
    open_page(browser, server.url("/"))
    # Over --max-request-bytes (64 KiB): set the box's value directly (typing is slow).
    browser.execute_script("document.getElementById('text').value = 'a'.repeat(70000);")
    browser.find_element(By.ID, "translate").click()
    wait_for_state(browser, ("done",))
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert error.text == ("The server answered 413: The request body is larger than the limit "
                          "of 65536 bytes (--max-request-bytes).")
    translate_by_keyboard(browser, *["ab"] * 9)  # 9 instances, over --max-batch-size 8
    assert browser.find_element(By.ID, "error").text == (
        "The server answered 400: 'inputs' holds 9 instances; the limit is 8 a request "
        "(--max-batch-size): send fewer at a time.")
    assert browser.find_elements(By.CSS_SELECTOR, "#results .result") == []


def test_the_map_downloads_as_svg_and_png(page):
    browser, server, _, downloads = page
    open_page(browser, server.url("/?q=abcd"))
    wait_for_state(browser, ("done",))
    for button, name in (("SVG", "attention-1.svg"), ("PNG", "attention-1.png")):
        browser.find_element(By.XPATH, f'//div[@class="downloads"]/button[.="{button}"]').click()
        path = downloads / name
        deadline = time.time() + 20
        while not (path.exists() and path.stat().st_size) and time.time() < deadline:
            time.sleep(0.1)
        assert path.exists(), os.listdir(downloads)
    svg = (downloads / "attention-1.svg").read_text()
    assert svg.count('class="cell"') == 5 * 4 and "<style>" in svg
    assert (downloads / "attention-1.png").read_bytes()[:4] == b"\x89PNG"


def test_a_new_version_is_picked_up(page, tiny_run):
    """Last here: it adds version 2 to the served base path."""
    browser, server, _, _ = page
    open_page(browser, server.url("/"))
    base = server.app[MODELS].base_path
    export.export_saved_model(tiny_run, base, strategies=export_strategies())
    WebDriverWait(browser, 60).until(
        lambda b: b.find_element(By.ID, "version-news").is_displayed())
    assert browser.find_element(By.ID, "version-news").text == (
        "Now serving version 2 (was 1).")
    assert browser.find_element(By.ID, "model-version").text == "2"
