"""The configuration reference, generated from the code: every ``luigi.Config`` section and every
task parameter that ``luigi.cfg`` or the command line can set, with its default and description.

    python -m tasks.config_reference > docs/configuration-reference.md

A hand-written table drifts; this one is rendered from the classes, and
``tests/unit/test_config_reference.py`` fails when the committed file differs from ``render()``.
Defaults are the ones written in the code, never what a ``luigi.cfg`` or the environment says,
so the file is the same on every machine and no configured value (a password in a URL) can leak
into it.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass
from types import ModuleType

import luigi
from luigi.parameter import ParameterVisibility

#: The command that regenerates the file; the test's failure message names it.
COMMAND = "python -m tasks.config_reference > docs/configuration-reference.md"

#: Parameter names whose defaults are never printed, whatever they hold. Names of environment
#: variables (``sasl_password_env``) are not secrets and stay visible.
_SENSITIVE_NAME = re.compile(r"(password|passwd|secret|token|credential|api_key)(?!_env$)", re.IGNORECASE)

_HIDDEN = "*(hidden)*"
_EMPTY = "*empty*"
_REQUIRED = "*required*"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Setting:
    """One key of a ``luigi.cfg`` section."""

    name: str
    default: str
    flag: str
    description: str


@dataclass(frozen=True)
class Section:
    """A ``luigi.cfg`` section: a ``luigi.Config`` class or a task's own parameters."""

    name: str
    summary: str
    settings: tuple[Setting, ...]


def code_default(param: luigi.Parameter) -> object:
    """The default written in the code, or None for a required parameter.

    Luigi has no public accessor for it: ``task_value`` would read ``luigi.cfg`` first."""
    from luigi.parameter import _no_value  # noqa: PLC2701 - the sentinel of "no default"

    default = param._default  # noqa: SLF001 - see the docstring
    return None if default is _no_value else default


def format_default(name: str, param: luigi.Parameter) -> str:
    """The default as one would write it in ``luigi.cfg``, marked up for the table."""
    if param.visibility != ParameterVisibility.PUBLIC or _SENSITIVE_NAME.search(name):
        return _HIDDEN
    value = code_default(param)
    if value is None:
        return _REQUIRED
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{format(value, 'g')}`"
    if isinstance(value, int):
        return f"`{value}`{_int_hint(name, value)}"
    text = str(param.serialize(value)).replace("|", "\\|")  # GitHub splits cells even inside code
    return f"`{text}`" if text else _EMPTY


def _int_hint(name: str, value: int) -> str:
    """A readable size beside a large integer: MiB for bytes, a square for pixel counts."""
    if name.endswith("_bytes") and value >= _MIB and value % _MIB == 0:
        return f" ({value // _MIB} MiB)"
    root = math.isqrt(value) if value > 0 else 0
    if name.endswith("_pixels") and root > 1 and root * root == value:
        return f" ({root}²)"
    return ""


def markdown_text(text: str) -> str:
    """A description or docstring as one line of a Markdown table: RST ``code`` as `code`, argparse's
    ``%%`` as ``%``, and the characters a table or an HTML renderer would take for its own escaped."""
    text = " ".join(text.split()).replace("``", "`").replace("%%", "%")
    parts = text.split("`")
    # Escape outside code spans only: inside backticks GitHub shows the text as it is.
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def describe_parameter(section: str, name: str, param: luigi.Parameter, flag: str,
                       inherited: bool = False) -> Setting | None:
    """The row for one parameter, or None for a private one (Luigi's ``ParameterVisibility.PRIVATE``).

    ``inherited``: tasks downstream carry the parameter too (``@requires``, ``@inherits``)."""
    if param.visibility == ParameterVisibility.PRIVATE:
        return None
    config_path = param._config_path or {}  # noqa: SLF001 - luigi reads the same attribute
    other = config_path.get("section", section), config_path.get("name", name)
    note = ""
    if other != (section, name):
        note = f"Also read from `[{other[0]}] {other[1]}`."
    elif inherited and not config_path:
        # Luigi reads it from the section of the task that is run, which passes it down.
        note = "A task downstream reads it from its own section, not this one."
    description = markdown_text(param.description or "")
    if note:
        description = f"{description.rstrip('.')}. {note}" if description else note
    return Setting(name=name, default=format_default(name, param), flag=flag, description=description)


def summary_of(cls: type) -> str:
    """The first paragraph of a class's own docstring, or ''."""
    doc = cls.__dict__.get("__doc__") or ""
    return markdown_text(inspect.cleandoc(doc).split("\n\n")[0]) if doc.strip() else ""


def config_sections(module: ModuleType | None = None) -> list[Section]:
    """One section per ``luigi.Config`` class of ``tasks.config``, in the order they are defined."""
    module = module or importlib.import_module("tasks.config")
    sections, seen = [], set()
    for cls in vars(module).values():
        # Its own classes only (also from its submodules, should it become a package), each once.
        own = inspect.isclass(cls) and issubclass(cls, luigi.Config) and cls.__module__.startswith(module.__name__)
        if not own or cls in seen:
            continue
        seen.add(cls)
        section = cls.get_task_family()
        rows = (describe_parameter(section, name, param, f"--{section}-{name}".replace("_", "-"))
                for name, param in cls.get_params())
        sections.append(Section(section, summary_of(cls), tuple(row for row in rows if row)))
    return sections


def task_sections(task_classes: list[type[luigi.Task]] | None = None) -> list[Section]:
    """One section per task with parameters of its own, in the order of ``tasks.__all__``.

    A parameter a task inherits (``@requires``, ``@inherits``) is the same object as its
    owner's, so it is listed once, under the first task that carries it."""
    if task_classes is None:
        tasks = importlib.import_module("tasks")
        task_classes = [getattr(tasks, name) for name in tasks.__all__]
    carriers: dict[int, int] = {}
    for cls in task_classes:
        for _, param in cls.get_params():
            carriers[id(param)] = carriers.get(id(param), 0) + 1
    seen: set[int] = set()
    sections = []
    for cls in task_classes:
        section, rows = cls.get_task_family(), []
        for name, param in cls.get_params():
            if id(param) not in seen:
                seen.add(id(param))
                rows.append(describe_parameter(section, name, param, f"--{name}".replace("_", "-"),
                                               inherited=carriers[id(param)] > 1))
        settings = tuple(row for row in rows if row)
        if settings:
            sections.append(Section(section, summary_of(cls), settings))
    return sections


_HEADER = f"""# Configuration reference

<!-- Generated from the code by `{COMMAND}`; edit the classes' descriptions, not this file. -->

Every key that `luigi.cfg` can set, generated from the `luigi.Config` classes and the tasks'
parameters: the default written in the code, how to give it on the command line, and what it
means. How the settings are read (sections, command-line flags, the environment, secrets) is in
[configuration.md](configuration.md).

A task's parameters are parameters of every task downstream of it too, so give them on the
command line by their plain name to the task you run (`luigi --module tasks PredictTask --epochs 5`).
In `luigi.cfg`, the task you run reads a key from its own section first, then from the section
it is listed under here (`[TrainModel] epochs = 5` applies to PredictTask too), unless its row
says otherwise.
"""

_FOOTER = """## Luigi's own sections

`[core]` (the scheduler's address), `[worker]`, `[retcode]` (exit codes) and luigid's
`[scheduler]` are Luigi's: see
[Luigi's configuration](https://luigi.readthedocs.io/en/stable/configuration.html).
"""


def render_section(section: Section) -> str:
    """One section as a Markdown heading, its summary and a table."""
    lines = [f"### `[{section.name}]`", ""]
    if section.summary:
        lines += [section.summary, ""]
    lines += ["| key | default | command line | description |", "| --- | --- | --- | --- |"]
    for setting in section.settings:
        lines.append(f"| `{setting.name}` | {setting.default} | `{setting.flag}` | {setting.description} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference, as committed in docs/configuration-reference.md."""
    parts = [_HEADER, "## Tasks\n"]
    parts += [render_section(section) for section in task_sections()]
    parts.append("## Sections\n")
    parts += [render_section(section) for section in config_sections()]
    parts.append(_FOOTER)
    return "\n".join(parts)


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
