"""Reading files without raising: text, a log's tail, a test's undeclared outputs."""

import os
import re
import zipfile
from typing import Dict, List, Optional

from tools.report.collected import Problem

MAX_LOG_CHARS = 60_000  # per rank-log section / log tail kept in a report


def tail(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """The last `limit` characters of `text`, cut at a line start and marked as cut."""
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    cut = cut[cut.find("\n") + 1 :] if "\n" in cut else cut
    return "[... %d characters cut ...]\n%s" % (len(text) - len(cut), cut)


def read_text(path: str) -> str:
    """The file's text (undecodable bytes replaced); "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


def to_float(value) -> Optional[float]:
    """``value`` as a float, or None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Outputs:
    """Files of one test's undeclared outputs (zip or plain directory)."""

    def __init__(self, result_dir: str, problems: List[Problem], subdir: str = ""):
        """Indexes `<result_dir>/test.outputs`, or only `<result_dir>/<subdir>`."""
        self.files: Dict[str, object] = {}  # relative path -> reader
        base = os.path.join(result_dir, "test.outputs")
        top = base
        if subdir:
            base, top = result_dir, os.path.join(result_dir, subdir)
        if not os.path.isdir(top):
            return
        for dirpath, _, filenames in os.walk(top):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, base).replace(os.sep, "/")
                if fn == "outputs.zip" and dirpath == base:
                    self._add_zip(full, problems)
                else:
                    self.files[rel] = lambda p=full: read_text(p)

    def _add_zip(self, path: str, problems: List[Problem]) -> None:
        try:
            zf = zipfile.ZipFile(path)
            names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            problems.append(Problem(path, "cannot read outputs.zip: %s" % e))
            return

        def reader(name, zf=zf, path=path):
            try:
                return zf.read(name).decode("utf-8", errors="replace")
            except (zipfile.BadZipFile, OSError, KeyError) as e:
                problems.append(Problem(path, "cannot read %s: %s" % (name, e)))
                return ""

        for name in names:
            if not name.endswith("/"):
                self.files.setdefault(name, lambda n=name: reader(n))

    def read(self, rel: str) -> Optional[str]:
        """The text of output file `rel`, or None if absent."""
        fn = self.files.get(rel)
        return fn() if fn else None

    def rank_logs(self) -> Dict[str, Dict[int, str]]:
        """{test class: {rank: path}} of rank_logs/<Class>/rank<R>.log."""
        out: Dict[str, Dict[int, str]] = {}
        for rel in self.files:
            m = re.match(r"^(?:.*/)?rank_logs/([^/]+)/rank(\d+)\.log$", rel)
            if m:
                out.setdefault(m.group(1), {})[int(m.group(2))] = rel
        return out
