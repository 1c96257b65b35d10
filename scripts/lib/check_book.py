#!/usr/bin/env python3
"""Checks the built book (mdBook, `scripts/docs`): every internal link of every page leads to a
page that exists and, when it names an anchor, to an element with that id; a link that leaves
the book must name a file of the repository; every page under docs/ is in the book; and the
links of README.md and ARCHITECTURE.md name files that exist.

    check_book.py BOOK_DIR REPO_ROOT

Prints each broken link as `page: link (why)` and exits 1 when there is one.
"""

import html.parser
import os
import re
import sys
import urllib.parse

SKIP_PAGES = {"print.html", "404.html", "toc.html"}
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if a.get("name") and tag == "a":
            self.ids.add(a["name"])
        if tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])


def parse(path, cache):
    if path not in cache:
        p = Page()
        with open(path, encoding="utf-8") as f:
            p.feed(f.read())
        cache[path] = p
    return cache[path]


def check_book(book, repo, errors):
    cache = {}
    docs = os.path.join(repo, "docs")
    pages = []
    for root, _, files in os.walk(book):
        for name in files:
            if name.endswith(".html") and name not in SKIP_PAGES:
                pages.append(os.path.join(root, name))
    if not pages:
        errors.append(f"{book}: no page was built")
        return
    for page in sorted(pages):
        rel_page = os.path.relpath(page, book)
        for href in parse(page, cache).links:
            if not href or EXTERNAL.match(href):
                continue
            target, _, fragment = href.partition("#")
            target = urllib.parse.unquote(target)
            fragment = urllib.parse.unquote(fragment)
            path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
            if os.path.isdir(path):
                path = os.path.join(path, "index.html")
            inside = os.path.commonpath([os.path.abspath(path), os.path.abspath(book)]) == os.path.abspath(book)
            if inside and os.path.exists(path):
                if fragment and path.endswith(".html") and fragment not in parse(path, cache).ids:
                    errors.append(f"{rel_page}: {href} (no element with id {fragment!r} there)")
                continue
            # Outside the book (or not built): a file of the repository, named from docs/.
            source = os.path.normpath(os.path.join(docs, os.path.dirname(rel_page), target))
            candidates = [source]
            if source.endswith(".html"):
                candidates.append(source[: -len(".html")] + ".md")
            if not any(os.path.exists(c) for c in candidates):
                errors.append(f"{rel_page}: {href} (no such page or file)")
            elif inside and source.endswith(".html"):
                errors.append(f"{rel_page}: {href} (a page of docs/ that is not in SUMMARY.md)")
    # Every page under docs/ is in the book.
    for root, _, files in os.walk(docs):
        for name in files:
            if not name.endswith(".md") or name == "SUMMARY.md":
                continue
            md = os.path.relpath(os.path.join(root, name), docs)
            if not os.path.exists(os.path.join(book, md[: -len(".md")] + ".html")):
                errors.append(f"docs/{md}: not in the book (add it to docs/SUMMARY.md)")


MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def check_markdown(repo, name, errors):
    path = os.path.join(repo, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # Links inside code blocks are examples, not links.
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for link in MD_LINK.findall(text):
        if EXTERNAL.match(link) or link.startswith("#"):
            continue
        target = urllib.parse.unquote(link.partition("#")[0])
        if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), target))):
            errors.append(f"{name}: {link} (no such file)")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    book, repo = sys.argv[1], sys.argv[2]
    errors = []
    check_book(book, repo, errors)
    for name in ("README.md", "ARCHITECTURE.md"):
        check_markdown(repo, name, errors)
    for e in errors:
        print(f"broken: {e}")
    if errors:
        sys.exit(1)
    print(f"the book's links and anchors are whole ({book})")


if __name__ == "__main__":
    main()
