"""The attention explorer on a served model: its size, its time to first result, a screenshot.

Starts `s2s-attn serve BASE_PATH --port 0`, opens `/?q=TEXT` in headless
Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium: the
`dev` extra), waits for the answer to be drawn and prints:

- the page's size: the HTML, script and style the server sends;
- the time to first result: from the start of navigation to the drawn
  answer, as the page's own `performance.now()` measures it (median of
  `--repeats` fresh loads; the first load after the server starts is printed
  apart);

and saves a screenshot of the first load (`--screenshot`, default
docs/explorer.png). The README's figures come from

    python benchmarks/explorer.py saved_models/g2p_en --text attention
"""

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import urllib.parse
import urllib.request

from serving_load import start_server  # benchmarks/, beside this script

from keras_s2s_attn.options import ServingOptions


def browser(width, height):
    from selenium import webdriver

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        sys.exit("explorer.py: no Chromium: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", f"--window-size={width},{height}",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options,
                            service=webdriver.ChromeService(executable_path=driver))


def page_bytes(url):
    """The bytes of the page and the files it loads (script, style)."""
    total = 0
    for path in ("/", "/explorer/explorer.js", "/explorer/explorer.css"):
        with urllib.request.urlopen(url + path, timeout=30) as response:
            total += len(response.read())
    return total


def load_and_time(driver, url):
    """Opens `url`; milliseconds from navigation start to the drawn answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 120).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
    error = driver.find_element(By.ID, "error")
    if error.is_displayed():
        sys.exit(f"explorer.py: the page shows an error: {error.text}")
    return driver.execute_script("return performance.now()")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_path", nargs="?", default="saved_models/g2p_en")
    parser.add_argument("--text", default="attention")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--screenshot", default="docs/explorer.png")
    parser.add_argument("--size", default="900,720", help="window WIDTH,HEIGHT in pixels")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split(","))
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        process, model_url = start_server(args.base_path, log,
                                          ServingOptions().max_batch_size, [])
        try:
            measure(model_url.split("/v1/models/")[0], args, width, height)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(30)


def measure(url, args, width, height):
    """Loads the page on the server at `url`; prints the figures, saves the screenshot."""
    driver = browser(width, height)
    try:
        query = "/?" + urllib.parse.urlencode({"q": args.text})
        first = load_and_time(driver, url + query)
        if args.screenshot:
            os.makedirs(os.path.dirname(args.screenshot) or ".", exist_ok=True)
            driver.save_screenshot(args.screenshot)
        times = [load_and_time(driver, url + query) for _ in range(args.repeats)]
    finally:
        driver.quit()
    print(f"page: {page_bytes(url):,} bytes (HTML, script and style, uncompressed)")
    print(f"time to first result for {args.text!r}: first load {first:.0f} ms; then "
          f"median {statistics.median(times):.0f} ms (min {min(times):.0f}, max "
          f"{max(times):.0f}) over {len(times)} loads")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
