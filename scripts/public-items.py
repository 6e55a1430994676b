#!/usr/bin/env python3
"""Count the public items of the `vhdkit` library: its semver surface.

Usage: scripts/public-items.py [--list] [--build] [--max N] [JSON]

JSON is rustdoc's JSON output for the crate (default: target/doc/vhdkit.json); --build makes it
first with
    RUSTC_BOOTSTRAP=1 cargo rustdoc -p vhdkit --features serde -- -Z unstable-options --output-format json
Every feature but `test-support`: that one only makes the repository's test machinery public,
hidden (`#[doc(hidden)]`) and unstable, and with it on rustdoc leaves out the items the crate
re-exports from those hidden modules (it documents them as hidden), so the count would drop.

What is counted: every item a user of the crate can name, reached from the crate root through
public modules and `pub use`, each item once (by rustdoc id) however many paths reach it.
Items hidden with `#[doc(hidden)]` are not in rustdoc's output, so not counted (the test
machinery and the three helpers only the `vhdkit` command uses). Two totals, then their sum:
  - items, each with a path of its own: modules, structs, unions, enums, traits, free
    functions, constants, statics, type aliases, macros; and each `pub use` that gives an item a
    second public name (a second promise). A re-export that is the only public path to its item
    (its module is private) is that item's name, not counted apart. The target of issue 19
    (at most 120) is on this total;
  - members: each enum variant; each named or tuple field of a struct, union or struct variant
    that is public (rustdoc omits the private ones); each method, associated constant and
    associated type of an inherent `impl`; each item declared in a public trait.
Not counted: trait implementations (`impl Trait for Type`, auto and blanket impls): they add no
name; they are listed apart with --list. Also reported: undocumented items (as `missing_docs`
sees them: every item but re-exports and tuple fields) and types of the crate used in a public
signature but not reachable (unnameable), both expected empty.
--max N fails (exit 1) when there are more than N items, or any undocumented or unnameable one.
--list prints every counted item (kind and path) before the totals.
"""
import collections
import json
import os
import subprocess
import sys

COUNTED_LEAVES = {"function", "constant", "static", "type_alias", "macro", "proc_macro",
                  "assoc_const", "assoc_type", "struct_field", "extern_type"}


def kind_of(item):
    return next(iter(item["inner"]))


class Walker:
    def __init__(self, doc, disabled=frozenset()):
        self.index = doc["index"]
        self.paths = doc.get("paths", {})
        self.disabled = disabled  # `use` ids to ignore (to test whether a re-export is an alias)
        self.uses = []  # (use id, target id) of the non-glob re-exports walked
        self.seen = set()
        self.counted = []  # (kind, path)
        self.trait_impls = []
        self.undocumented = []
        self.members = 0

    def item(self, item_id):
        return self.index.get(str(item_id))

    def count(self, item, path, member=False):
        kind = kind_of(item)
        self.counted.append((kind, path, item["id"]))
        if member or kind in ("variant", "struct_field", "assoc_const", "assoc_type"):
            self.members += 1
        # As `missing_docs`: every item but re-exports and positional (tuple) fields.
        positional = kind == "struct_field" and (item.get("name") or "").isdigit()
        if not (item.get("docs") or "").strip() and kind != "use" and not positional:
            self.undocumented.append((kind, path))

    def visit(self, item_id, path, in_impl=False):
        item = self.item(item_id)
        if item is None or item_id in self.seen:
            return
        self.seen.add(item_id)
        kind = kind_of(item)
        inner = item["inner"][kind]
        name = item.get("name")
        here = f"{path}::{name}" if name and path else (name or path)
        if kind == "module":
            self.count(item, here)
            for child in inner["items"]:
                self.visit(child, here)
        elif kind == "use":
            self.visit_use(item, inner, path)
        elif kind in ("struct", "union"):
            self.count(item, here)
            self.visit_fields(inner, here)
            self.visit_impls(inner.get("impls", []), here)
        elif kind == "enum":
            self.count(item, here)
            for variant in inner["variants"]:
                self.visit(variant, here)
            self.visit_impls(inner.get("impls", []), here)
        elif kind == "variant":
            self.count(item, here)
            self.visit_variant_fields(inner.get("kind"), here)
        elif kind == "trait":
            self.count(item, here)
            for child in inner["items"]:
                self.visit(child, here, in_impl=True)
        elif kind in COUNTED_LEAVES:
            self.count(item, here, member=in_impl)

    def visit_use(self, item, inner, path):
        target = inner.get("id")
        if item["id"] in self.disabled:
            return
        if inner.get("is_glob"):
            module = self.item(target) if target is not None else None
            self.count(item, f"{path}::{inner['source']}")
            if module is not None and kind_of(module) == "module":
                for child in module["inner"]["module"]["items"]:
                    self.visit(child, path)
            return
        self.uses.append((item["id"], target))
        self.count(item, f"{path}::{inner['name']} (pub use {inner['source']})")
        if target is not None:
            self.visit(target, path)

    def visit_fields(self, inner, here):
        kind = inner.get("kind")
        if isinstance(kind, dict):
            if "plain" in kind:
                for f in kind["plain"]["fields"]:
                    self.visit(f, here)
            elif "tuple" in kind:
                for f in kind["tuple"]:
                    if f is not None:
                        self.visit(f, here)
        elif "fields" in inner:  # unions
            for f in inner["fields"]:
                self.visit(f, here)

    def visit_variant_fields(self, kind, here):
        if not isinstance(kind, dict):
            return
        if "struct" in kind:
            for f in kind["struct"]["fields"]:
                self.visit(f, here)
        elif "tuple" in kind:
            for f in kind["tuple"]:
                if f is not None:
                    self.visit(f, here)

    def visit_impls(self, impls, here):
        for impl_id in impls:
            impl = self.item(impl_id)
            if impl is None:
                continue
            inner = impl["inner"]["impl"]
            if inner.get("trait") is not None:
                if not inner.get("is_synthetic") and inner.get("blanket_impl") is None:
                    self.trait_impls.append(f"impl {inner['trait']['path']} for {here}")
                continue
            for child in inner["items"]:
                self.visit(child, here, in_impl=True)

    def drop_use(self, use_id):
        self.counted = [c for c in self.counted if c[2] != use_id]

    def unnameable(self):
        """Types of this crate used by counted items but not reachable themselves."""
        found = set()

        def scan(node):
            if isinstance(node, dict):
                rp = node.get("resolved_path")
                if isinstance(rp, dict):
                    # `paths` knows hidden and private items too (the index does not).
                    target = self.paths.get(str(rp.get("id"))) or self.item(rp.get("id"))
                    if target is not None and target.get("crate_id") == 0 \
                            and rp["id"] not in self.seen:
                        found.add(rp.get("path"))
                for v in node.values():
                    scan(v)
            elif isinstance(node, list):
                for v in node:
                    scan(v)

        for item_id in self.seen:
            item = self.item(item_id)
            if item is not None:
                scan(item["inner"])
        return sorted(found)


def main(argv):
    limit = None
    if "--max" in argv:
        i = argv.index("--max")
        limit = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    args = [a for a in argv if not a.startswith("--")]
    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root_dir, "target"))
    path = args[0] if args else os.path.join(target, "doc", "vhdkit.json")
    if "--build" in argv:
        env = dict(os.environ, RUSTC_BOOTSTRAP="1")
        subprocess.run(["cargo", "rustdoc", "-q", "-p", "vhdkit", "--features", "serde", "--",
                        "-Z", "unstable-options", "--output-format", "json"],
                       cwd=root_dir, env=env, check=True)
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    walker = Walker(doc)
    walker.visit(doc["root"], "")
    # A re-export that is the only public path to its item is that item's name, not a second
    # one: it is not counted apart.
    for use_id, target in list(walker.uses):
        if target is None or walker.item(target) is None:
            continue  # a re-export of another crate's item: counted
        other = Walker(doc, frozenset([use_id]))
        other.visit(doc["root"], "")
        if target not in other.seen:
            walker.drop_use(use_id)
    if "--list" in argv:
        for kind, item_path, _ in sorted(walker.counted, key=lambda k: k[1]):
            print(f"{kind:12} {item_path}")
        for line in sorted(set(walker.trait_impls)):
            print(f"{'(not counted)':12} {line}")
    by_kind = collections.Counter(kind for kind, _, _ in walker.counted)
    print("by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())))
    print(f"trait impls (not counted): {len(set(walker.trait_impls))}")
    for kind, item_path in walker.undocumented:
        print(f"undocumented: {kind} {item_path}")
    unnameable = walker.unnameable()
    for name in unnameable:
        print(f"unnameable: {name} (used in a public signature, not reachable)")
    items = len(walker.counted) - walker.members
    print(f"members (variants, fields, methods, associated items): {walker.members}")
    print(f"items (everything else, each with a path of its own): {items}")
    print(f"public items: {len(walker.counted)}")
    if limit is not None:
        if items > limit or walker.undocumented or unnameable:
            print(f"FAIL: more than {limit} items, or undocumented or unnameable ones")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
