"""Make ``docs/search-page.png``: the search page on the sample corpus, after one query.

Serves the page with ``instructor-index ui`` and drives it in headless Chromium through the
same helpers as the browser test (``tests/browser.py``), so the picture shows what the test
checks. Needs the Debian ``chromium`` and ``chromium-driver`` packages and ``selenium``.

    python bench/screenshot.py                        # builds ./sample-index if needed
    python bench/screenshot.py --index /tmp/sample-index --out docs/search-page.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import browser  # noqa: E402  (tests/browser.py: the driver code the browser test uses)

QUERY = "how much sodium should I eat to bring my blood pressure down"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=ROOT / "sample-index", help="index folder")
    parser.add_argument("--documents", type=Path, default=browser.SAMPLE_DOCUMENTS)
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "search-page.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    if browser.chromium_paths() is None:
        sys.exit("Chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    print(f"Building (or updating) {args.index} from {args.documents}")
    browser.build_index(args.index, args.documents)
    started = time.perf_counter()
    with browser.serve(args.index) as url, browser.chromium(args.width, args.height) as driver:
        browser.open_page(driver, url)
        browser.search(driver, args.query)
        found = browser.wait_for_results(driver, lambda hits, summary: bool(summary), "results")
        driver.execute_script("document.activeElement.blur();")  # no focus ring on the box
        time.sleep(0.5)  # let the last fonts and transitions settle
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    print(
        f"{args.out}: {len(found)} results for {args.query!r}, top {found[0]['title']!r} "
        f"({time.perf_counter() - started:.1f}s)"
    )


if __name__ == "__main__":
    main()
