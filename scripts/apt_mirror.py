"""Print the Debian mirror this machine's apt uses, for scripts/compose-smoke.sh's debootstrap.

Read from apt's own sources only: one-line `deb` entries in sources.list and
sources.list.d/*.list, and deb822 stanzas in sources.list.d/*.sources. A `deb` entry for the
wanted suite wins, else the first one for a main archive (not -security, -updates or
-backports: a mirror carries every release). No mirror is built in: with none, it prints
nothing to stdout, says why on stderr and exits 1.

Usage: python3 scripts/apt_mirror.py [SUITE [APT_DIR]]   (defaults: bookworm, /etc/apt)
Standard library only: it runs on the host's python3, before any venv exists.
"""

from __future__ import annotations

import pathlib
import sys

PARTIAL_SUITES = ("-security", "-updates", "-backports")


def one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    """(URI, [suite]) of each `deb` line: `deb [options] URI suite components...`."""
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [ arch=amd64 signed-by=... ]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2:
            entries.append((words[0], [words[1]]))
    return entries


def deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    """(URI, suites) of each enabled stanza whose Types include `deb`."""
    entries = []
    for stanza in text.split("\n\n"):
        fields: dict[str, list[str]] = {}
        key = ""
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:  # a continuation line of the field above
                fields[key] += line.split()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.split()
        if "deb" not in fields.get("types", []):
            continue
        if [v.lower() for v in fields.get("enabled", ["yes"])] == ["no"]:
            continue
        entries += [(uri, fields.get("suites", [])) for uri in fields.get("uris", [])]
    return entries


def apt_entries(apt_dir: pathlib.Path) -> list[tuple[str, list[str]]]:
    """Every `deb` source, in apt's reading order."""
    entries = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            entries += one_line_entries(path.read_text(errors="replace"))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        if path.is_file():
            entries += deb822_entries(path.read_text(errors="replace"))
    return entries


def choose_mirror(entries: list[tuple[str, list[str]]], suite: str) -> str | None:
    main_archives = [
        (uri, suites) for uri, suites in entries
        if any(not s.endswith(PARTIAL_SUITES) for s in suites)
    ]
    for uri, suites in main_archives:
        if suite in suites:
            return uri.rstrip("/")
    return main_archives[0][0].rstrip("/") if main_archives else None


def main(argv: list[str]) -> int:
    suite = argv[1] if len(argv) > 1 else "bookworm"
    apt_dir = pathlib.Path(argv[2] if len(argv) > 2 else "/etc/apt")
    mirror = choose_mirror(apt_entries(apt_dir), suite)
    if mirror is None:
        print(f"no Debian mirror in this machine's apt sources ({apt_dir}/sources.list, "
              f"{apt_dir}/sources.list.d/*.list, *.sources)", file=sys.stderr)
        return 1
    print(mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
