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
"""

from __future__ import annotations

import ast
import difflib
import glob
import itertools
import operator
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError
from .site import Site, SiteConfig, expand

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Pos = tuple[str, int]  # (file, 1-based line)


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
def read_yaml(path: str, errors: list[str]) -> Any:
    """Parse ``path`` into LDict/LList; syntax errors are appended to ``errors``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        errors.append(f"{path}: cannot read file: {e.strerror or e}")
        return None
    except UnicodeDecodeError as e:
        errors.append(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})")
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
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


def _build(node: yaml.Node, file: str, loader: Any, errors: list[str]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out = LDict()
        out.pos = (file, node.start_mark.line + 1)
        loader.flatten_mapping(node)
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            kpos = (file, knode.start_mark.line + 1)
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
        return out
    if isinstance(node, yaml.SequenceNode):
        lst = LList()
        lst.pos = (file, node.start_mark.line + 1)
        for item in node.value:
            lst.append(_build(item, file, loader, errors))
            lst.ipos.append((file, item.start_mark.line + 1))
        return lst
    return loader.construct_object(node, deep=True)


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


def _eval(expr: str, env: dict[str, int]) -> int:
    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name) and n.id in env:
            return env[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"only integers, repeat variables and + - * // % are allowed in ${{{expr}}}")

    return ev(ast.parse(expr, mode="eval"))


def _subst(v: Any, env: dict[str, Any]) -> Any:
    if isinstance(v, str):
        if v.startswith("${") and v.endswith("}") and v.count("${") == 1:
            return _eval(v[2:-1], env)
        s = v
        while "${" in s:
            a = s.index("${")
            b = s.index("}", a)
            s = s[:a] + str(_eval(s[a + 2 : b], env)) + s[b + 1 :]
        if "{" in s:
            try:
                s = s.format(**env)
            except (KeyError, IndexError, ValueError):
                pass  # not a template for us (e.g. a child id template using {n})
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


def _range_values(spec: Any) -> list[Any]:
    if isinstance(spec, str) and "-" in spec:
        a, _, b = spec.partition("-")
        lo, hi = int(a), int(b)
        if hi < lo:
            raise ValueError(f"range {spec!r}: end before start")
        return list(range(lo, hi + 1))
    if isinstance(spec, list) and len(spec) == 2 and all(isinstance(x, int) for x in spec):
        if spec[1] < spec[0]:
            raise ValueError(f"range {spec!r}: end before start")
        return list(range(spec[0], spec[1] + 1))
    if isinstance(spec, dict) and "values" in spec:
        return list(spec["values"])
    if isinstance(spec, int):
        return [spec]
    raise ValueError(
        "expected a range 'A-B', [A, B] or {values: [...]} of repeat values"
    )


def expand_repeats(devices: Any, errors: list[str]) -> Any:
    if not isinstance(devices, LList):
        return devices
    out = LList()
    out.pos = devices.pos
    for i, entry in enumerate(devices):
        pos = devices.ipos[i]
        if not (isinstance(entry, LDict) and "repeat" in entry):
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
        lens = {len(r) for r in ranges}
        combos = zip(*ranges, strict=True) if len(lens) == 1 else itertools.product(*ranges)
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
            except (ValueError, SyntaxError, ZeroDivisionError) as e:
                errors.append(f"{pos[0]}:{pos[1]}: devices[{i}]: template error: {e}")
                break
            out.append(d)
            out.ipos.append(pos)
    return out


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
def load_site(path: str | os.PathLike[str], validate_drivers: bool = True) -> Site:
    """Load and validate a site file; raise :class:`ConfigError` listing every problem."""
    path = os.fspath(path)
    errors: list[str] = []
    raw = read_yaml(path, errors)
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
                data = read_yaml(f, errors)
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
        raw["devices"] = expand_repeats(raw["devices"], errors)

    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as e:
        errors.extend(_pydantic_messages(e, raw))
        # still report broken references, so one pass shows every problem
        errors.extend(_raw_reference_checks(raw))
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)

    errors.extend(_semantic_checks(cfg, raw, validate_drivers))
    if errors:
        raise ConfigError(errors)
    site = expand(cfg, path)
    devs = raw.get("devices")
    for i, d in enumerate(cfg.devices):
        f, line = devs.ipos[i] if isinstance(devs, LList) and i < len(devs.ipos) else (path, 0)
        site.origins[f"{d.area}/{d.id}"] = f"{f}:{line}"
    return site


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
            try:
                ids = [c.id.format(n=n) for n in range(c.start, c.start + c.count)]
            except (KeyError, IndexError, ValueError) as e:
                errs.append(f"{_at(raw, ('devices', i, 'children', j, 'id'))}: bad id template {c.id!r}: {e}; use {{n}} or {{n:02d}}")
                continue
            dup = child_ids.intersection(ids)
            if dup:
                errs.append(f"{_at(raw, ('devices', i, 'children', j, 'id'))}: child ids {sorted(dup)[:3]} repeat an earlier child group of {key}")
            child_ids.update(ids)
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
