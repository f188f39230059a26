"""The documentation says what the code does, without running any server.

- every /v1/… and /ops/… path shown in the README and docs/ is served by the app (its URL map)
  or described by its OpenAPI document;
- every `topupctl …` command shown parses: its subcommands exist, `--help` exits 0, and its
  options are ones those subcommands take;
- docs/configuration.md lists exactly the environment variables that settings/__init__.py
  reads, and says which program reads each of the others;
- the README stays short;
- no file of the repository points outside it (a sibling directory, the team's notes, a
  machine's path) or at the tracker's numbers.
"""
from __future__ import annotations

import pathlib
import re
import subprocess

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

import settings as settings_module
from app.openapi import document
from topupctl.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
CONFIGURATION = ROOT / "docs" / "configuration.md"
README_LIMIT = 8000


def text(path: pathlib.Path) -> str:
    return path.read_text(encoding="utf-8")


def shown(path: pathlib.Path) -> str:
    """A file's name as a failure message shows it."""
    return str(path.relative_to(ROOT))


# --- paths -------------------------------------------------------------------------------------

# a path starts at /v1/ or /ops/ and runs to a space, a quote, a bracket or the query string
_API_PATH = re.compile(r"/(?:v1|ops)/[^\s`'\"()\[\]?#,;|\\]+")


def api_paths(markdown: str) -> set[str]:
    return {match.group(0).rstrip(".:") for match in _API_PATH.finditer(markdown)}


def test_the_path_finder_finds_paths_in_prose_code_and_urls():
    found = api_paths("GET `/v1/topups/{id}`, then curl -s \"$API/v1/topups?limit=2\" and "
                      "http://127.0.0.1:8000/ops/queues. See /v1/wallet/debits: cents.")
    assert found == {"/v1/topups/{id}", "/v1/topups", "/ops/queues", "/v1/wallet/debits"}


def _served(app, path: str) -> bool:
    adapter = app.url_map.bind("localhost")
    try:
        adapter.match(path, method="GET")
    except MethodNotAllowed:
        return True          # the path exists, for other methods
    except (NotFound, RequestRedirect):
        return False
    return True


def _described(openapi_paths, path: str) -> bool:
    for template in openapi_paths:
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return True
    return False


@pytest.mark.parametrize("path", [README, *DOCS], ids=shown)
def test_every_api_path_shown_is_served_or_described(app, path):
    openapi_paths = document(app)["paths"]
    unknown = sorted(p for p in api_paths(text(path))
                     if not _served(app, p) and not _described(openapi_paths, p))
    assert unknown == [], f"{shown(path)} shows paths the API does not have"


def _templates_shown(openapi_paths, markdown: str) -> set[str]:
    return {template for template in openapi_paths
            if any(_described([template], path) for path in api_paths(markdown))}


def test_the_readme_tries_every_client_endpoint(app):
    openapi_paths = document(app)["paths"]
    assert {"/v1/topups", "/v1/topups/{topup_id}", "/v1/wallet", "/v1/wallet/transactions",
            "/v1/wallet/debits", "/v1/webhook_endpoints", "/v1/webhook_endpoints/{endpoint_id}",
            "/v1/events", "/ops/queues"} <= _templates_shown(openapi_paths, text(README))


def test_the_api_page_shows_every_path_of_the_openapi_document(app):
    page = text(ROOT / "docs" / "api.md")
    missing = []
    for template in document(app)["paths"]:
        pattern = re.sub(r"\\\{[^/]+?\\\}", r"[^\\s/`]+", re.escape(template))
        if not re.search(pattern + r"(?![\w/])", page):
            missing.append(template)
    assert missing == []


def test_a_path_the_api_does_not_have_is_caught(app):
    openapi_paths = document(app)["paths"]
    for path in ("/v1/topup", "/v1/wallet/credits", "/ops/queue", "/v1/topups/tu_1/refund"):
        assert not _served(app, path) and not _described(openapi_paths, path), path


# --- topupctl commands -------------------------------------------------------------------------

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`]+)`")
_MAKE_TOPUPCTL = re.compile(r"make topupctl ARGS=\"([^\"]*)\"")
_TOPUPCTL = re.compile(r"(?<![\w/.-])topupctl((?:[ \t]+[^\s#|;&)`]+)+)")
_WORD = re.compile(r"[a-z][a-z-]*")
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def code_of(markdown: str) -> list[str]:
    """The code in a Markdown file: each line of a fenced block, each inline code span."""
    blocks = [line for block in _FENCE.findall(markdown) for line in block.splitlines()]
    prose = _FENCE.sub("", markdown)
    return blocks + [" ".join(span.split()) for span in _INLINE.findall(prose)]


def topupctl_commands(markdown: str) -> set[str]:
    """Every topupctl command line shown, as the arguments after ``topupctl``."""
    commands = set()
    for code in code_of(markdown):
        commands.update(args.strip() for args in _MAKE_TOPUPCTL.findall(code))
        code = _MAKE_TOPUPCTL.sub("", code)
        commands.update(args.strip() for args in _TOPUPCTL.findall(code))
    return {command for command in commands if command}


def _command_words(command: str) -> list[str]:
    """The leading words that may be subcommands (up to the first option or argument)."""
    words = []
    for token in command.split():
        if not _WORD.fullmatch(token):
            break
        words.append(token)
    return words


def topupctl_help(words: list[str], capsys) -> tuple[int, str]:
    """What ``topupctl WORDS --help`` exits with and prints."""
    try:
        build_parser().parse_args(words + ["--help"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def check_command(command: str, capsys) -> list[str]:
    """What is wrong with one command line (an empty list when nothing is): a word that is
    no command, an option that no help on the way shows."""
    words = []
    code, shown = topupctl_help(words, capsys)
    for word in _command_words(command):
        code, printed = topupctl_help(words + [word], capsys)
        if code != 0:
            return [f"topupctl {' '.join(words + [word])}: no such command"]
        words.append(word)   # a command, or the command's own first argument
        shown += printed
    options = set(_OPTION.findall(shown))
    return [f"topupctl {' '.join(words)}: no option {option}"
            for option in _OPTION.findall(command) if option not in options]


SHOWN_IN = [README, *DOCS, ROOT / "simulator" / "README.md"]


@pytest.mark.parametrize("path", SHOWN_IN, ids=shown)
def test_every_topupctl_command_shown_parses(path, capsys):
    problems = [problem for command in sorted(topupctl_commands(text(path)))
                for problem in check_command(command, capsys)]
    assert problems == [], f"{shown(path)}: {problems}"


def test_the_docs_show_the_operators_commands():
    shown_anywhere = set().union(*(topupctl_commands(text(p)) for p in SHOWN_IN))
    firsts = {command.split()[0] for command in shown_anywhere}
    assert {"queues", "topups", "orphans", "callbacks", "reconcile", "scheduler"} <= firsts


def test_a_command_that_does_not_parse_is_caught(capsys):
    found = topupctl_commands("```sh\nmake topupctl ARGS=\"topups shw X\"\n```\n"
                              "Run `topupctl queues dead\n--requeu` or `topupctl refund`.")
    assert found == {"topups shw X", "queues dead --requeu", "refund"}
    assert all(check_command(command, capsys) for command in found)
    assert check_command("queues dead --queue callbacks --requeue", capsys) == []
    assert check_command("reconcile var/statement.csv --apply", capsys) == []


# --- environment variables ---------------------------------------------------------------------

class RecordingEnvironment(dict):
    """An environment that remembers every name asked of it."""

    def __init__(self, values):
        super().__init__(values)
        self.asked = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.asked.add(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.asked.add(name)
        return super().__contains__(name)


def read_by_settings() -> set[str]:
    env = RecordingEnvironment({"DARAJA_CALLBACK_TOKEN": "ab" * 12})
    settings_module.load(env)
    return env.asked


def sections(markdown: str) -> dict[str, str]:
    """``## Heading`` → the text up to the next ``## ``."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


_ROW_NAME = re.compile(r"^\| `([A-Za-z][A-Za-z0-9_]*)` \|(.*)$", re.M)
_ENV_NAME = re.compile(r"(?<![\w-])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?!\w)")


class Configuration:
    def __init__(self, markdown: str):
        parts = sections(markdown)
        self.gateway = {name for name, _ in _ROW_NAME.findall(parts["The gateway's settings"])}
        # variable → the files named in its row
        self.elsewhere = {name: re.findall(r"`([\w/.-]+\.py)`", rest)
                          for name, rest in _ROW_NAME.findall(parts["Read by other programs"])}
        self.not_variables = set(_ENV_NAME.findall(parts["Not environment variables"]))
        self.mentioned = set(_ENV_NAME.findall(markdown))


def configuration_problems(markdown: str) -> list[str]:
    doc = Configuration(markdown)
    read = read_by_settings()
    problems = [f"{name} is listed but settings/__init__.py does not read it"
                for name in sorted(doc.gateway - read)]
    problems += [f"{name} is read by settings/__init__.py but not listed"
                 for name in sorted(read - doc.gateway)]
    for name, files in sorted(doc.elsewhere.items()):
        if name in read:
            problems.append(f"{name} is read by settings/__init__.py, not elsewhere")
        if not files:
            problems.append(f"{name}: the row names no file that reads it")
        problems += [f"{name} does not appear in {file}" for file in files
                     if name not in text(ROOT / file)]
    problems += [f"{name} is said not to be a variable, but settings reads it"
                 for name in sorted(doc.not_variables & read)]
    known = doc.gateway | set(doc.elsewhere) | doc.not_variables
    problems += [f"{name} is mentioned but neither listed nor explained"
                 for name in sorted(doc.mentioned - known)]
    return problems


def test_the_configuration_page_lists_exactly_what_settings_reads():
    assert configuration_problems(text(CONFIGURATION)) == []


def test_the_configuration_page_names_the_settings_it_must():
    doc = Configuration(text(CONFIGURATION))
    assert {"DATABASE_URL", "STK_QUERY_BACKOFF_S", "SWEEP_REDRIVE_EVERY_S",
            "WORKER_METRICS_HOST"} <= doc.gateway
    assert "dramatiq_worker_timeout" in doc.elsewhere


def test_a_setting_missing_or_invented_is_caught():
    page = text(CONFIGURATION)
    without = re.sub(r"^\| `STK_QUERY_BACKOFF_S` \|.*\n", "", page, flags=re.M)
    assert configuration_problems(without) == [
        "STK_QUERY_BACKOFF_S is read by settings/__init__.py but not listed"]
    invented = page.replace("### Timing of STK queries\n",
                            "### Timing of STK queries\n\n| `STK_QUERY_JITTER` | `0` | x |\n")
    assert configuration_problems(invented) == [
        "STK_QUERY_JITTER is listed but settings/__init__.py does not read it"]
    unexplained = page.replace("## The gateway's settings\n",
                               "Set `LOG_LEVEL` to DEBUG.\n\n## The gateway's settings\n")
    assert configuration_problems(unexplained) == [
        "LOG_LEVEL is mentioned but neither listed nor explained"]


# --- the README's size -------------------------------------------------------------------------

def test_the_readme_is_read_in_ten_minutes():
    assert len(text(README)) < README_LIMIT


# --- nothing points outside the repository -----------------------------------------------------

# Written so that this file does not match itself.
OUTSIDE = [re.compile(pattern, re.I) for pattern in (
    r"\.\./shared", r"contract\.md", r"daraja\.md", r"engineering[-]notes", r"/wor[k]/",
    r"\bissues?\s*#?\d+")]


def outside_references(body: str) -> list[str]:
    return [match.group(0) for pattern in OUTSIDE for match in pattern.finditer(body)]


def repository_files() -> list[pathlib.Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout: {exc}")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def test_no_file_points_outside_the_repository():
    found = {}
    for path in repository_files():
        if not path.is_file():
            continue
        try:
            body = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue        # images
        if outside_references(body):
            found[shown(path)] = outside_references(body)
    assert found == {}


def test_a_reference_outside_is_caught():
    # each sample is cut in two, so that this file does not hold what it looks for
    for line in ("see ../" "shared/notes", "as Contract" ".md says", "daraja" ".md §2",
                 "engineering" "-notes, SQLite", "/wo" "rk/main/x", "fixed in is" "sue 12",
                 "the goals of Is" "sue #7"):
        assert outside_references(line), line
    assert outside_references("issues are tracked elsewhere; the worker/ and /workers/") == []
