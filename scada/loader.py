# One module (over ~600 lines): the stages of one load pass (YAML with lines, includes, repeat expansion, typing) share the line bookkeeping every error message needs.
"""Load a site file: YAML with line numbers -> includes -> repeat expansion -> typed model.

Every problem is reported at once as ``file:line: field.path: what was expected (got ...)``
inside one :class:`~scada.errors.ConfigError`; the CLI prints them and exits with code 2.

Line tracking: the YAML is composed into nodes (libyaml when available) and rebuilt into
:class:`LDict`/:class:`LList`, plain ``dict``/``list`` subclasses that remember where each key
and item stood. A pydantic error ``loc`` is walked through that structure to find the line.

Repeat expansion (a city is a few hundred lines, not 34,000 entries)::

    devices:
      - id: "cab-{n:03d}"
        repeat: {n: 1-120}            # or [1, 120], or a list of values
        profile: cabinet-modbus
        area: centre
        connection: {host: 127.0.0.1, port: "${5020 + n}"}

Strings in a repeated entry are formatted with the repeat variables (``str.format``);
``${expr}`` evaluates integer arithmetic (``+ - * // %``) on them and, when it is the whole
string, yields a number.

Limits (:data:`LIMITS`, docs/configuration.md "Limits"): a site file is input, and a few
hundred bytes of YAML can ask for gigabytes (aliases of aliases, the "billion laughs"; a
``repeat`` over a hundred million values; a format width of a billion). Every way a file
expands is bounded *before* it expands, so a hostile file is refused in well under a second
and a few MB: bytes read (checked on the file's size, before reading), YAML nodes counted on
the parser's event stream with every alias use counted as the nodes it repeats (before any
node is built), nesting depth, device entries after ``repeat`` (counted before expanding),
devices with their children, tags and alarm instances (counted from the profiles before the
devices are made), and format widths in templates. Each refusal names file:line and the limit.
The limits are about five times the design target of one server (Paris: 200,000 luminaires,
2,000 junctions); a bigger city is split over several servers.
"""

from __future__ import annotations

import ast
import difflib
import glob
import itertools
import math
import operator
import os
import stat
import string
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError
from .sections.common import check_format
from .site import SegmentsOf, Site, SiteConfig, child_id, expand

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Pos = tuple[str, int]  # (file, 1-based line)


@dataclass(frozen=True)
class Limits:
    """What one site (its file and everything it includes) may expand to. The defaults are
    about five times the design target of one server process (a Paris of 200,000 luminaires
    and 2,000 junctions: 2.2 MB of YAML, 270,000 nodes, 5,800 device entries, 206,000
    devices, 3.1 M tags, 1.9 M alarm instances)."""

    #: bytes of YAML read, all files together (checked on each file's size before reading)
    yaml_bytes: int = 16 * 2**20
    #: YAML nodes (scalars, lists, mappings), all files together; an alias counts as the
    #: nodes it repeats, every time it is used
    yaml_nodes: int = 750_000
    #: nesting of lists and mappings
    depth: int = 64
    #: entries of ``devices:`` after ``repeat`` expansion
    device_entries: int = 100_000
    #: devices, children (luminaires behind cabinets and gateways) included
    devices: int = 1_000_000
    #: tags (one per device and point of its profile)
    tags: int = 16_000_000
    #: alarm instances (one per device and alarm template of its profile)
    alarms: int = 10_000_000
    #: absolute value of a ``${expr}`` result or intermediate
    int_abs: int = 2**53


LIMITS = Limits()
_MORE = "; split a bigger city over several servers (docs/configuration.md, Limits)"


class _Budget:
    """What the files read so far used of the site's limits."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.bytes = 0
        self.nodes = 0


class LDict(dict):
    """A dict that remembers the file/line of itself and of each key."""

    __slots__ = ("kpos", "pos")

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.pos: Pos = ("?", 0)
        self.kpos: dict[Any, Pos] = {}


class LList(list):
    """A list that remembers the file/line of itself and of each item."""

    __slots__ = ("ipos", "pos")

    def __init__(self, *a: Any):
        super().__init__(*a)
        self.pos: Pos = ("?", 0)
        self.ipos: list[Pos] = []


# ----------------------------------------------------------------------------- YAML reading
def read_yaml(path: str, errors: list[str], budget: _Budget | None = None) -> Any:
    """Parse ``path`` into LDict/LList; problems (syntax, limits) are appended to ``errors``
    and None is returned."""
    budget = budget if budget is not None else _Budget(LIMITS)
    text = _read_text(path, errors, budget)
    if text is None:
        return None
    if not _measure(text, path, errors, budget):
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
            errors.append(f"{path}:1: the file is empty; expected a mapping of sections")
            return None
        return _build(node, path, loader, errors)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        what = " ".join(x for x in (e.context, e.problem) if x)
        errors.append(f"{path}:{line}: YAML syntax error: {what}")
        return None
    except yaml.YAMLError as e:
        errors.append(f"{path}: YAML error: {e}")
        return None
    finally:
        loader.dispose()


_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"


def _read_text(path: str, errors: list[str], budget: _Budget) -> str | None:
    """The file's text, if it is a regular file that fits in what is left of the byte limit
    (its size is checked before reading: ``/dev/zero`` or a 10 GB log cannot be included)."""
    left = budget.limits.yaml_bytes - budget.bytes
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            errors.append(f"{path}: not a regular file; a site file and its includes must be files")
            return None
        if st.st_size > left:
            errors.append(f"{path}:1: {_bytes_msg(st.st_size, budget)}")
            return None
        with open(path, "rb") as f:
            data = f.read(left + 1)
    except OSError as e:
        errors.append(f"{path}: cannot read file: {e.strerror or e}")
        return None
    if len(data) > left:  # it grew since stat
        errors.append(f"{path}:1: {_bytes_msg(len(data), budget)}")
        return None
    budget.bytes += len(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        errors.append(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
        return None


def _bytes_msg(size: int, budget: _Budget) -> str:
    before = f" ({budget.bytes:,} already read from the site's other files)" if budget.bytes else ""
    return (f"the file is {size:,} bytes; a site holds at most {budget.limits.yaml_bytes:,} bytes "
            f"of YAML in all its files{before}{_MORE}")


_SCALAR, _ALIAS = yaml.ScalarEvent, yaml.AliasEvent
_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _measure(text: str, path: str, errors: list[str], budget: _Budget) -> bool:
    """Count the YAML nodes ``text`` expands to, on the parser's event stream (no node is
    built, memory stays flat), and refuse it as soon as the site's node limit or the nesting
    limit is passed. An alias counts as the size of what its anchor holds (computed when the
    anchor's node closes), so the 30 nested aliases of a "billion laughs" are refused at the
    alias that crosses the limit, by its own line. A recursive alias (one inside the node it
    names) is refused too: expanding it would never end. Syntax errors are left to the
    composer, which reports them with their line."""
    lim = budget.limits
    left = lim.yaml_nodes - budget.nodes
    n = 0
    stack: list[tuple[int, str | None]] = []  # (n at the collection's start, its anchor)
    sizes: dict[str, int] = {}  # anchor -> nodes its node holds
    loader = _Loader(text)
    try:
        while True:
            ev = loader.get_event()
            if isinstance(ev, _SCALAR):
                n += 1
                if ev.anchor:
                    sizes[ev.anchor] = 1
            elif isinstance(ev, _ALIAS):
                size = sizes.get(ev.anchor)
                if size is None:
                    if any(anchor == ev.anchor for _, anchor in stack):
                        errors.append(f"{path}:{ev.start_mark.line + 1}: the alias *{ev.anchor} is "
                                      f"inside the node its anchor names: it would repeat itself "
                                      f"forever")
                        return False
                    size = 1  # an undefined alias: the composer reports it
                n += size
                if n > left:
                    errors.append(
                        f"{path}:{ev.start_mark.line + 1}: the alias *{ev.anchor} repeats "
                        f"{size:,} YAML nodes; with it the site would hold more than "
                        f"{lim.yaml_nodes:,} nodes (every use of an alias counts what it repeats)")
                    return False
                continue
            elif isinstance(ev, _OPEN):
                stack.append((n, ev.anchor))
                n += 1
                if len(stack) > lim.depth:
                    errors.append(f"{path}:{ev.start_mark.line + 1}: lists and mappings nested "
                                  f"more than {lim.depth} deep")
                    return False
            elif isinstance(ev, _CLOSE):
                start, anchor = stack.pop()
                if anchor:
                    sizes[anchor] = n - start
                continue
            elif isinstance(ev, yaml.StreamEndEvent):
                break
            else:
                continue
            if n > left:
                errors.append(f"{path}:{ev.start_mark.line + 1}: the site holds more than "
                              f"{lim.yaml_nodes:,} YAML nodes (all its files together){_MORE}")
                return False
    except yaml.YAMLError:
        return True
    finally:
        loader.dispose()
    budget.nodes += n
    return True


def _build(node: yaml.Node, file: str, loader: Any, errors: list[str]) -> Any:
    """LDict/LList/scalars from a composed node. Aliases are built once per use (the node
    count was bounded by :func:`_measure`). Merge keys (``<<: *defaults``) follow the YAML
    merge-key spec: the mapping's own keys win over merged ones, and an earlier merged mapping
    over a later one; only the mapping's own keys can be duplicates."""
    if isinstance(node, yaml.MappingNode):
        out = LDict()
        out.pos = (file, node.start_mark.line + 1)
        merged: list[tuple[Any, Any, Pos]] = []
        for knode, vnode in node.value:
            kpos = (file, knode.start_mark.line + 1)
            if knode.tag == _MERGE:
                sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        errors.append(f"{file}:{kpos[1]}: a merge key '<<' takes a mapping or a "
                                      f"list of mappings (e.g. '<<: *defaults')")
                        continue
                    sub = _build(src, file, loader, errors)
                    merged.extend((k, v, sub.kpos.get(k, kpos)) for k, v in sub.items())
                continue
            key = _scalar(knode, file, loader, errors)
            if isinstance(key, (list, dict)):
                errors.append(f"{file}:{kpos[1]}: a mapping key must be a plain value")
                continue
            if key in out:
                errors.append(
                    f"{file}:{kpos[1]}: duplicate key {key!r} (first at line {out.kpos[key][1]})"
                )
                continue
            out[key] = _build(vnode, file, loader, errors)
            out.kpos[key] = kpos
        for key, value, pos in merged:
            if key not in out:
                out[key] = value
                out.kpos[key] = pos
        return out
    if isinstance(node, yaml.SequenceNode):
        lst = LList()
        lst.pos = (file, node.start_mark.line + 1)
        for item in node.value:
            lst.append(_build(item, file, loader, errors))
            lst.ipos.append((file, item.start_mark.line + 1))
        return lst
    return _scalar(node, file, loader, errors)


def _scalar(node: yaml.Node, file: str, loader: Any, errors: list[str]) -> Any:
    """A scalar's value; a value the constructor refuses (an integer of 5,000 digits, a bad
    timestamp) is an error at its line, not a traceback."""
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, yaml.constructor.ConstructorError) as e:
        errors.append(f"{file}:{node.start_mark.line + 1}: cannot read this value: {e}")
        return None


# ----------------------------------------------------------------------------- locating
def locate(root: Any, loc: tuple[Any, ...]) -> Pos:
    """The file/line of the deepest element of ``loc`` that exists in ``root``."""
    cur = root
    pos: Pos = getattr(root, "pos", ("?", 0))
    for part in loc:
        if isinstance(cur, LDict) and part in cur:
            pos = cur.kpos.get(part, pos)
            cur = cur[part]
        elif isinstance(cur, LList) and isinstance(part, int) and 0 <= part < len(cur):
            pos = cur.ipos[part] if part < len(cur.ipos) else pos
            cur = cur[part]
        elif isinstance(cur, (LDict, LList)) and isinstance(part, str) and not part.isidentifier():
            continue  # pydantic's internal loc parts (e.g. 'function-after[...]')
        else:
            break
    return pos


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif isinstance(p, str) and (p.startswith(("function-", "union[", "tagged-union[")) or "[" in p):
            continue
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"


def _vocabulary() -> list[str]:
    words: set[str] = set()

    def walk(m: type[BaseModel], seen: set[type]) -> None:
        if m in seen:
            return
        seen.add(m)
        for name, f in m.model_fields.items():
            words.add(name)
            for t in _model_types(f.annotation):
                walk(t, seen)

    walk(SiteConfig, set())
    return sorted(words)


def _model_types(ann: Any) -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        out.append(ann)
    for a in getattr(ann, "__args__", ()) or ():
        out.extend(_model_types(a))
    return out


_VOCAB: list[str] | None = None


def _pydantic_messages(
    e: ValidationError, root: Any, prefix: tuple[Any, ...] = (), vocab: list[str] | None = None
) -> list[str]:
    global _VOCAB
    out = []
    for err in e.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        file, line = locate(root, loc)
        where = dotted(loc)
        typ = err["type"]
        if typ == "extra_forbidden":
            key = loc[-1]
            words = vocab if vocab is not None else (_VOCAB := _VOCAB or _vocabulary())
            close = difflib.get_close_matches(str(key), words, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            msg = f"unknown key {key!r}{hint}"
        elif typ == "missing":
            msg = "required field is missing"
        else:
            msg = err["msg"].replace("Value error, ", "")
            if "input" in err and typ not in ("model_type", "dict_type"):
                got = err["input"]
                if not isinstance(got, (dict, list)):
                    msg += f" (got {got!r})"
        out.append(f"{file}:{line}: {where}: {msg}")
    return out


# ----------------------------------------------------------------------------- repeat expansion
_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


#: longest ``${expr}`` (a city's arithmetic is short; a long one is a deep parse tree)
MAX_EXPR_CHARS = 200


def _eval(expr: str, env: dict[str, int], int_abs: int = LIMITS.int_abs) -> int:
    """Integer arithmetic on repeat variables; every result stays within ``int_abs`` (no
    million-digit integers from ``n*n*n*...``)."""
    if len(expr) > MAX_EXPR_CHARS:
        raise ValueError(f"${{{expr[:40]}...}} is longer than {MAX_EXPR_CHARS} characters")

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int) and not isinstance(n.value, bool):
            return bound(n.value)
        if isinstance(n, ast.Name) and n.id in env and isinstance(env[n.id], int):
            return bound(env[n.id])
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return bound(_OPS[type(n.op)](ev(n.left), ev(n.right)))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"only integers, repeat variables and + - * // % are allowed in ${{{expr}}}")

    def bound(v: int) -> int:
        if abs(v) > int_abs:
            raise ValueError(f"${{{expr}}}: {'a value' if abs(v) > 10**30 else v} is beyond "
                             f"+-{int_abs:,}")
        return v

    return ev(ast.parse(expr, mode="eval"))


_FMT = string.Formatter()


def _subst(v: Any, env: dict[str, Any]) -> Any:
    if isinstance(v, str):
        if v.startswith("${") and v.endswith("}") and v.count("${") == 1:
            return _eval(v[2:-1], env)
        s = v
        while "${" in s:
            a = s.index("${")
            b = s.find("}", a)
            if b < 0:
                raise ValueError(f"{v!r}: '${{' without its closing '}}'")
            s = s[:a] + str(_eval(s[a + 2 : b], env)) + s[b + 1 :]
        if "{" in s and _is_template(s, env):
            s = check_format(s).format(**env)
        return s
    if isinstance(v, LDict):
        d = LDict()
        d.pos, d.kpos = v.pos, v.kpos
        for k, x in v.items():
            d[k] = _subst(x, env)
        return d
    if isinstance(v, LList):
        lst = LList(_subst(x, env) for x in v)
        lst.pos, lst.ipos = v.pos, v.ipos
        return lst
    return v


def _is_template(s: str, env: dict[str, Any]) -> bool:
    """Every field of ``s`` is a repeat variable (else it is not a template for us, e.g. a
    message with {device} that the alarm engine fills in)."""
    try:
        names = [name for _text, name, _spec, _conv in _FMT.parse(s) if name is not None]
    except ValueError:
        return False
    return all(name.split(".")[0].split("[")[0] in env for name in names)


def _range_values(spec: Any) -> range | list[Any]:
    """The values of one repeat variable, as a ``range`` (not materialised: its length is
    checked against the limits before anything is expanded) or the list given."""
    if isinstance(spec, str) and "-" in spec:
        a, _, b = spec.partition("-")
        lo, hi = int(a), int(b)
        if hi < lo:
            raise ValueError(f"range {spec!r}: end before start")
        return range(lo, hi + 1)
    if isinstance(spec, list) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        if spec[1] < spec[0]:
            raise ValueError(f"range {spec!r}: end before start")
        return range(spec[0], spec[1] + 1)
    if isinstance(spec, dict) and "values" in spec and isinstance(spec["values"], list):
        return list(spec["values"])
    if isinstance(spec, int):
        return [spec]
    raise ValueError(
        "expected a range 'A-B', [A, B] or {values: [...]} of repeat values"
    )


def expand_repeats(devices: Any, errors: list[str], budget: _Budget | None = None) -> Any:
    """Expand ``repeat`` entries. The number of entries, and the YAML nodes their copies add
    (entries x nodes of the entry), are checked against the limits before any is made."""
    budget = budget if budget is not None else _Budget(LIMITS)
    limits = budget.limits
    if not isinstance(devices, LList):
        return devices
    out = LList()
    out.pos = devices.pos
    for i, entry in enumerate(devices):
        pos = devices.ipos[i]
        if not (isinstance(entry, LDict) and "repeat" in entry):
            if len(out) >= limits.device_entries:
                errors.append(f"{pos[0]}:{pos[1]}: devices[{i}]: more than "
                              f"{limits.device_entries:,} device entries{_MORE}")
                break
            out.append(entry)
            out.ipos.append(pos)
            continue
        spec = entry["repeat"]
        rpos = entry.kpos["repeat"]
        if not isinstance(spec, dict) or not spec:
            errors.append(f"{rpos[0]}:{rpos[1]}: devices[{i}].repeat: expected a mapping of variable -> range, e.g. {{n: 1-120}}")
            continue
        try:
            names = list(spec)
            ranges = [_range_values(spec[k]) for k in names]
        except (ValueError, TypeError) as e:
            errors.append(f"{rpos[0]}:{rpos[1]}: devices[{i}].repeat: {e}")
            continue
        lens = [len(r) for r in ranges]
        same = len(set(lens)) == 1
        count = lens[0] if same else math.prod(lens)
        if len(out) + count > limits.device_entries:
            how = "" if same else f" ({' x '.join(f'{n:,}' for n in lens)}: ranges of different lengths combine)"
            errors.append(f"{rpos[0]}:{rpos[1]}: devices[{i}].repeat makes {count:,} devices{how}; "
                          f"a site holds at most {limits.device_entries:,} device entries"
                          + (f" ({len(out):,} before this one)" if out else "") + _MORE)
            continue
        size = _nodes(entry)
        if budget.nodes + (count - 1) * size > limits.yaml_nodes:
            errors.append(f"{rpos[0]}:{rpos[1]}: devices[{i}].repeat makes {count:,} copies of an "
                          f"entry of {size:,} YAML nodes; with them the site would hold more than "
                          f"{limits.yaml_nodes:,} nodes{_MORE}")
            continue
        budget.nodes += (count - 1) * size
        combos = zip(*ranges, strict=True) if same else itertools.product(*ranges)
        body = LDict((k, v) for k, v in entry.items() if k != "repeat")
        body.pos, body.kpos = entry.pos, entry.kpos
        for combo in combos:
            env = dict(zip(names, combo, strict=True))
            try:
                d = LDict()
                d.pos, d.kpos = body.pos, body.kpos
                for k, v in body.items():
                    d[k] = v if k == "children" else _subst(v, env)
                if "children" in body:
                    d["children"] = _subst_children(body["children"], env)
            except (ValueError, SyntaxError, ZeroDivisionError, RecursionError) as e:
                errors.append(f"{pos[0]}:{pos[1]}: devices[{i}]: template error: {e}")
                break
            out.append(d)
            out.ipos.append(pos)
    return out


def _nodes(v: Any) -> int:
    """YAML nodes of a built value (each key, value, list and mapping counts one)."""
    if isinstance(v, dict):
        return 1 + sum(1 + _nodes(x) for x in v.values())
    if isinstance(v, list):
        return 1 + sum(_nodes(x) for x in v)
    return 1


def _subst_children(children: Any, env: dict[str, Any]) -> Any:
    if not isinstance(children, LList):
        return children
    lst = LList()
    lst.pos, lst.ipos = children.pos, children.ipos
    for c in children:
        if isinstance(c, LDict):
            d = LDict()
            d.pos, d.kpos = c.pos, c.kpos
            for k, v in c.items():
                d[k] = v if k == "id" else _subst(v, env)
            lst.append(d)
        else:
            lst.append(c)
    return lst


# ----------------------------------------------------------------------------- driver lookup
_INCLUDABLE = frozenset(("profiles", "devices", "alarm_templates"))


def driver_class(protocol: str) -> type | None:
    """The driver class registered under ``scada.drivers`` for ``protocol`` (None if absent).

    A driver that is registered but fails to import raises :class:`ConfigError` naming it.
    """
    for ep in entry_points(group="scada.drivers"):
        if ep.name == protocol:
            try:
                return ep.load()
            except (ImportError, AttributeError) as e:
                raise ConfigError(
                    f"driver {protocol!r} ({ep.value}) is installed but failed to load: {e}"
                ) from e
    return None


def known_protocols() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="scada.drivers"))


# ----------------------------------------------------------------------------- main entry
def load_site(path: str | os.PathLike[str], validate_drivers: bool = True,
              limits: Limits = LIMITS) -> Site:
    """Load and validate a site file; raise :class:`ConfigError` listing every problem.

    Nothing the file asks for is expanded past ``limits`` (see :class:`Limits`)."""
    path = os.fspath(path)
    errors: list[str] = []
    budget = _Budget(limits)
    raw = read_yaml(path, errors, budget)
    if raw is None:
        raise ConfigError(errors)
    if not isinstance(raw, LDict):
        raise ConfigError([f"{path}:1: expected a mapping of sections (site, areas, devices, ...)"])
    base = os.path.dirname(os.path.abspath(path))

    # includes: profile files merged into `profiles` (each key remembers its own file/line)
    profiles = raw.get("profiles")
    if profiles is None:
        profiles = LDict()
        profiles.pos = raw.pos
        raw["profiles"] = profiles
        raw.kpos["profiles"] = raw.pos
    pending_templates: list[tuple[str, Any]] = []
    incs = raw.get("include", [])
    if isinstance(incs, list) and isinstance(profiles, LDict):
        for k, pattern in enumerate(incs):
            ipos = incs.ipos[k] if isinstance(incs, LList) else raw.pos
            if not isinstance(pattern, str):
                errors.append(f"{ipos[0]}:{ipos[1]}: include[{k}]: expected a file path or glob")
                continue
            files = sorted(glob.glob(os.path.join(base, pattern)))
            if not files:
                errors.append(f"{ipos[0]}:{ipos[1]}: include[{k}]: no file matches {pattern!r} (relative to {base})")
            for f in files:
                data = read_yaml(f, errors, budget)
                if data is None:
                    continue
                if not isinstance(data, LDict) or not set(data) or set(data) - _INCLUDABLE:
                    extra = sorted(set(data) - _INCLUDABLE) if isinstance(data, LDict) else []
                    errors.append(
                        f"{f}:{data.kpos[extra[0]][1] if extra else 1}: an included file holds "
                        f"'profiles:', 'devices:' and/or 'alarm_templates:' only"
                        + (f"; unknown key {extra[0]!r}" if extra else "")
                    )
                    continue
                if "devices" in data:
                    devs = data["devices"]
                    if not isinstance(devs, LList):
                        errors.append(f"{f}:{data.kpos['devices'][1]}: devices: expected a list of devices")
                    else:
                        target = raw.get("devices")
                        if not isinstance(target, LList):
                            target = LList()
                            target.pos = raw.pos
                            raw["devices"] = target
                            raw.kpos["devices"] = raw.pos
                        target.extend(devs)
                        target.ipos.extend(devs.ipos)
                if "alarm_templates" in data:
                    pending_templates.append((f, data["alarm_templates"]))
                if "profiles" not in data:
                    continue
                if not isinstance(data["profiles"], LDict):
                    errors.append(f"{f}:{data.kpos['profiles'][1]}: profiles: expected a mapping of name -> profile")
                    continue
                for name, prof in data["profiles"].items():
                    if name in profiles:
                        was = profiles.kpos[name]
                        errors.append(
                            f"{f}:{data['profiles'].kpos[name][1]}: profiles.{name}: duplicate profile "
                            f"(already defined at {was[0]}:{was[1]})"
                        )
                        continue
                    profiles[name] = prof
                    profiles.kpos[name] = data["profiles"].kpos[name]

    # alarm templates kept in their own files, attached to profiles defined anywhere
    for f, templates in pending_templates:
        if not isinstance(templates, LDict):
            errors.append(f"{f}:1: alarm_templates: expected a mapping of profile name -> list of alarms")
            continue
        for pname, defs in templates.items():
            tpos = templates.kpos[pname]
            prof = profiles.get(pname) if isinstance(profiles, LDict) else None
            if not isinstance(prof, LDict):
                errors.append(f"{tpos[0]}:{tpos[1]}: alarm_templates.{pname}: unknown profile {pname!r}")
                continue
            if not isinstance(defs, LList):
                errors.append(f"{tpos[0]}:{tpos[1]}: alarm_templates.{pname}: expected a list of alarms")
                continue
            target = prof.get("alarms")
            if not isinstance(target, LList):
                target = LList()
                target.pos = tpos
                prof["alarms"] = target
                prof.kpos["alarms"] = tpos
            target.extend(defs)
            target.ipos.extend(defs.ipos)

    if "devices" in raw:
        raw["devices"] = expand_repeats(raw["devices"], errors, budget)

    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as e:
        errors.extend(_pydantic_messages(e, raw))
        # still report broken references, so one pass shows every problem
        errors.extend(_raw_reference_checks(raw))
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    # before anything is made per device (child ids, instances, tags): the totals, from the
    # profiles and the counts alone
    errors.extend(_size_checks(cfg, raw, limits))
    if errors:
        raise ConfigError(errors)

    errors.extend(_semantic_checks(cfg, raw, validate_drivers))
    if errors:
        raise ConfigError(errors)
    site = expand(cfg, path, _segments_of(cfg, validate_drivers))
    devs = raw.get("devices")
    for i, d in enumerate(cfg.devices):
        f, line = devs.ipos[i] if isinstance(devs, LList) and i < len(devs.ipos) else (path, 0)
        site.origins[f"{d.area}/{d.id}"] = f"{f}:{line}"
    return site


def _size_checks(cfg: SiteConfig, raw: Any, limits: Limits) -> list[str]:
    """Devices (children included), tags and alarm instances the site would make, counted
    from the profiles; the first device entry that takes a total past its limit is named."""
    points = {name: len(p.points) for name, p in cfg.profiles.items()}
    alarms = {name: len(p.alarms) for name, p in cfg.profiles.items()}
    ndev = ntags = nalarms = 0
    for i, d in enumerate(cfg.devices):
        ndev += 1
        ntags += points.get(d.profile, 0)
        nalarms += alarms.get(d.profile, 0)
        for c in d.children:
            ndev += c.count
            ntags += c.count * points.get(c.profile, 0)
            nalarms += c.count * alarms.get(c.profile, 0)
        for total, limit, what in ((ndev, limits.devices, "devices (children included)"),
                                   (ntags, limits.tags, "tags"),
                                   (nalarms, limits.alarms, "alarm instances")):
            if total > limit:
                return [f"{_at(raw, ('devices', i))}: with this device the site has {total:,} "
                        f"{what}; the limit is {limit:,}{_MORE}"]
    return []


def _segments_of(cfg: SiteConfig, validate_drivers: bool) -> SegmentsOf:
    """Profile name -> its driver's child id fields (``Driver.child_segments``), cached."""
    cache: dict[str, Any] = {}

    def of(profile: str) -> Any:
        if profile not in cache:
            prof = cfg.profiles.get(profile)
            cls = driver_class(prof.protocol) if (prof and prof.protocol and validate_drivers) else None
            hook = getattr(cls, "child_segments", None)
            cache[profile] = hook(prof.options) if hook is not None and prof is not None else None
        return cache[profile]

    return of


def _raw_reference_checks(raw: Any) -> list[str]:
    """Unknown profile/area references, checked on the raw data when the model did not validate."""
    errs: list[str] = []
    profiles = raw.get("profiles") if isinstance(raw, dict) else None
    areas = raw.get("areas") if isinstance(raw, dict) else None
    devices = raw.get("devices") if isinstance(raw, dict) else None
    if not isinstance(devices, list):
        return errs
    pnames = set(profiles) if isinstance(profiles, dict) else None
    anames = {a.get("id") for a in areas if isinstance(a, dict)} if isinstance(areas, list) else None
    for i, d in enumerate(devices):
        if not isinstance(d, dict):
            continue
        prof = d.get("profile")
        if pnames is not None and isinstance(prof, str) and prof not in pnames:
            close = difflib.get_close_matches(prof, sorted(pnames), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errs.append(f"{_at(raw, ('devices', i, 'profile'))}: unknown profile {prof!r}{hint}")
        area = d.get("area")
        if anames is not None and isinstance(area, str) and area not in anames:
            close = difflib.get_close_matches(area, sorted(a for a in anames if isinstance(a, str)), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errs.append(f"{_at(raw, ('devices', i, 'area'))}: unknown area {area!r}{hint}")
    return errs


def _at(raw: Any, loc: tuple[Any, ...]) -> str:
    f, line = locate(raw, loc)
    return f"{f}:{line}: {dotted(loc)}"


def _semantic_checks(cfg: SiteConfig, raw: Any, validate_drivers: bool) -> list[str]:
    errs: list[str] = []
    areas: dict[str, int] = {}
    for i, a in enumerate(cfg.areas):
        if a.id in areas:
            errs.append(f"{_at(raw, ('areas', i, 'id'))}: duplicate area id {a.id!r} (also areas[{areas[a.id]}])")
        areas.setdefault(a.id, i)
    pnames = sorted(cfg.profiles)
    seen: dict[str, int] = {}
    drivers: dict[str, type | None] = {}

    def drv(proto: str) -> type | None:
        if proto not in drivers:
            drivers[proto] = driver_class(proto) if validate_drivers else None
        return drivers[proto]

    def unknown_profile(name: str, loc: tuple[Any, ...]) -> None:
        close = difflib.get_close_matches(name, pnames, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known profiles: {', '.join(pnames) or 'none'}"
        errs.append(f"{_at(raw, loc)}: unknown profile {name!r}{hint}")

    for pname, prof in cfg.profiles.items():
        names: dict[str, int] = {}
        for k, pt in enumerate(prof.points):
            if pt.name in names:
                errs.append(
                    f"{_at(raw, ('profiles', pname, 'points', k, 'name'))}: duplicate point name "
                    f"{pt.name!r} (also points[{names[pt.name]}]); each point needs its own name"
                )
            names.setdefault(pt.name, k)

    if validate_drivers:
        known = known_protocols()
        for pname, prof in cfg.profiles.items():
            if prof.protocol is None:
                continue
            cls = drv(prof.protocol)
            if cls is None:
                errs.append(
                    f"{_at(raw, ('profiles', pname, 'protocol'))}: unknown protocol {prof.protocol!r}; "
                    f"expected one of {', '.join(known) or '(no driver installed)'}"
                )
                continue
            errs.extend(_driver_model(cls, "ProfileOptions", prof.options, raw, ("profiles", pname, "options")))
            for k, pt in enumerate(prof.points):
                errs.extend(_driver_model(cls, "PointSource", pt.source, raw, ("profiles", pname, "points", k, "source")))
        for dname, opts in cfg.drivers.items():
            cls = drv(dname)
            if cls is None:
                errs.append(f"{_at(raw, ('drivers', dname))}: unknown driver {dname!r}; expected one of {', '.join(known)}")
            else:
                errs.extend(_driver_model(cls, "Options", opts, raw, ("drivers", dname)))

    errs.extend(_alarm_checks(cfg, raw))
    errs.extend(_service_checks(cfg, raw, validate_drivers))
    segs = _segments_of(cfg, validate_drivers)

    for i, d in enumerate(cfg.devices):
        if d.area not in areas:
            close = difflib.get_close_matches(d.area, list(areas), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; declared areas: {', '.join(areas)}"
            errs.append(f"{_at(raw, ('devices', i, 'area'))}: unknown area {d.area!r}{hint}")
        key = f"{d.area}/{d.id}"
        if key in seen:
            errs.append(f"{_at(raw, ('devices', i, 'id'))}: duplicate device {key!r} (also devices[{seen[key]}])")
        seen.setdefault(key, i)
        prof = cfg.profiles.get(d.profile)
        if prof is None:
            unknown_profile(d.profile, ("devices", i, "profile"))
            continue
        if prof.protocol and validate_drivers and drv(prof.protocol) is not None:
            conn = {**prof.connection, **d.connection}
            errs.extend(_driver_model(drv(prof.protocol), "Connection", conn, raw, ("devices", i, "connection")))
        child_ids: set[str] = set()
        for j, c in enumerate(d.children):
            if c.profile not in cfg.profiles:
                unknown_profile(c.profile, ("devices", i, "children", j, "profile"))
            seg = segs(c.profile)
            try:
                ids = [child_id(c.id, n, seg(n) if seg else None) for n in range(c.start, c.start + c.count)]
            except (KeyError, IndexError, ValueError) as e:
                errs.append(f"{_at(raw, ('devices', i, 'children', j, 'id'))}: bad id template {c.id!r}: {e}")
                continue
            dup = child_ids.intersection(ids)
            if dup:
                errs.append(f"{_at(raw, ('devices', i, 'children', j, 'id'))}: child ids {sorted(dup)[:3]} repeat an earlier child group of {key}")
            child_ids.update(ids)
    errs.extend(_open311_checks(cfg, raw))
    return errs


def _open311_checks(cfg: SiteConfig, raw: Any) -> list[str]:
    """``open311.jurisdictions`` name municipalities of ``areas``; ``open311.services`` name
    services of the catalogue (docs/open311.md)."""
    from .open311.services import CATALOGUE

    errs: list[str] = []
    o = cfg.open311
    juris = {a.municipality or a.name or a.id for a in cfg.areas}
    for jid in o.jurisdictions:
        if jid not in juris:
            errs.append(f"{_at(raw, ('open311', 'jurisdictions', jid))}: {jid!r} is no area's municipality; "
                        f"expected one of {', '.join(sorted(juris))}")
    codes = [s.code for s in CATALOGUE]
    for code in o.services:
        if code not in codes:
            close = difflib.get_close_matches(code, codes, n=1)
            errs.append(f"{_at(raw, ('open311', 'services', code))}: unknown Open311 service {code!r}"
                        + (f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(codes)}"))
    return errs


def _hint(name: str, known: list[str] | set[str], what: str) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; its {what}: {', '.join(sorted(known)) or 'none'}"


def _alarm_checks(cfg: SiteConfig, raw: Any) -> list[str]:
    """What the alarm engine would refuse at start, found here with file:line: a template on a
    point (or reference, or suppressing alarm/point) its profile does not have, an alarm name
    twice in a profile (its own templates and alarm_templates files together), a rule on the
    parent of a device that has none, or naming what the parent's profile does not have."""
    errs: list[str] = []
    for pname, prof in cfg.profiles.items():
        points = {p.name for p in prof.points}
        names: dict[str, int] = {}
        for k, a in enumerate(prof.alarms):
            loc = ("profiles", pname, "alarms", k)
            if a.name in names:
                errs.append(f"{_at(raw, (*loc, 'name'))}: alarm {a.name!r} declared twice in profile "
                            f"{pname!r} (also alarms[{names[a.name]}], maybe from an alarm_templates "
                            f"file); alarm names are unique per device")
            names.setdefault(a.name, k)
            for field in ("point", "reference"):
                v = getattr(a, field)
                if v is not None and v not in points:
                    errs.append(f"{_at(raw, (*loc, field))}: profile {pname!r} has no point {v!r}"
                                f"{_hint(v, points, 'points')}")
        alarms = {a.name for a in prof.alarms}
        for k, a in enumerate(prof.alarms):
            for j, r in enumerate(a.suppressed_by):
                if r.of != "self":
                    continue
                loc = ("profiles", pname, "alarms", k, "suppressed_by", j)
                if r.alarm is not None and r.alarm not in alarms:
                    errs.append(f"{_at(raw, (*loc, 'alarm'))}: profile {pname!r} has no alarm "
                                f"{r.alarm!r}{_hint(r.alarm, alarms, 'alarms')}")
                if r.point is not None and r.point not in points:
                    errs.append(f"{_at(raw, (*loc, 'point'))}: profile {pname!r} has no point "
                                f"{r.point!r}{_hint(r.point, points, 'points')}")

    def parent_rules(pname: str) -> list[tuple[str, Any]]:
        prof = cfg.profiles.get(pname)
        return [(a.name, r) for a in prof.alarms for r in a.suppressed_by if r.of == "parent"] \
            if prof is not None else []

    seen: set[tuple[str, str]] = set()
    for i, d in enumerate(cfg.devices):
        rules = parent_rules(d.profile)
        if rules and ("", d.profile) not in seen:
            seen.add(("", d.profile))
            errs.append(f"{_at(raw, ('devices', i, 'profile'))}: device {d.area}/{d.id} has no parent, "
                        f"but alarm {rules[0][0]!r} of its profile {d.profile!r} is suppressed by its "
                        f"parent's; use the profile for children only, or write 'of: self'")
        parent = cfg.profiles.get(d.profile)
        if parent is None:
            continue
        for j, c in enumerate(d.children):
            if (d.profile, c.profile) in seen:
                continue
            seen.add((d.profile, c.profile))
            have_alarms = {a.name for a in parent.alarms}
            have_points = {p.name for p in parent.points}
            for aname, r in parent_rules(c.profile):
                missing = (("alarm", r.alarm) if r.alarm is not None and r.alarm not in have_alarms else
                           ("point", r.point) if r.point is not None and r.point not in have_points else None)
                if missing:
                    errs.append(f"{_at(raw, ('devices', i, 'children', j, 'profile'))}: alarm {aname!r} "
                                f"of profile {c.profile!r} is suppressed by its parent's {missing[0]} "
                                f"{missing[1]!r}, which the parent's profile {d.profile!r} does not have")
    return errs


def _service_checks(cfg: SiteConfig, raw: Any, validate_backends: bool) -> list[str]:
    """What the services would refuse at start: a historian backend that is not installed (or
    options its model refuses, when the backend declares an ``Options`` model), and a user
    name declared twice (which role would win is undefined)."""
    errs: list[str] = []
    hist = cfg.historian
    if validate_backends and hist.enabled:
        eps = {ep.name: ep for ep in entry_points(group="scada.historians")}
        ep = eps.get(hist.backend)
        if ep is None:
            errs.append(f"{_at(raw, ('historian', 'backend'))}: unknown historian backend "
                        f"{hist.backend!r}; expected one of {', '.join(sorted(eps)) or '(none installed)'}")
        else:
            try:
                cls = ep.load()
            except (ImportError, AttributeError) as e:
                errs.append(f"{_at(raw, ('historian', 'backend'))}: historian backend "
                            f"{hist.backend!r} ({ep.value}) is installed but failed to load: {e}")
            else:
                errs.extend(_driver_model(cls, "Options", hist.options, raw, ("historian", "options")))
    users: dict[str, int] = {}
    for k, u in enumerate(cfg.users):
        if u.name in users:
            errs.append(f"{_at(raw, ('users', k, 'name'))}: user {u.name!r} declared twice (also "
                        f"users[{users[u.name]}]); one entry per user, with one role")
        users.setdefault(u.name, k)
    return errs


def _driver_model(cls: type | None, attr: str, data: dict[str, Any], raw: Any, loc: tuple[Any, ...]) -> list[str]:
    model = getattr(cls, attr, None) if cls is not None else None
    if model is None:
        return []
    try:
        model.model_validate(data)
    except ValidationError as e:
        vocab = sorted(model.model_fields)
        return _pydantic_messages(e, raw, loc, vocab)
    return []
