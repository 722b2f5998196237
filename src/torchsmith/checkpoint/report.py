"""What a load did: :class:`LoadReport`, printed as a readable table.

    >>> model = create_model("resnet18")
    >>> _ = save_weights(nn.DataParallel(model), "dp_model.pt")
    >>> report = load_weights(model, "dp_model.pt")
    >>> print(report)
    LoadReport  dp_model.pt (torch)
      loaded      122 of 122 model tensors, 11,699,132 values (44.6 MiB)
      checksums   verified (xxh3-64, 122 tensors)
      prefixes    removed 'module.' from 122 keys
      result      ok
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..display import capped, html_table, more
from ..units import format_bytes
from .upgrades import Upgrade


@dataclass(frozen=True)
class Mismatch:
    """A key present on both sides whose shape or dtype cannot be loaded."""

    key: str
    file_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    file_dtype: str
    model_dtype: str

    @property
    def reason(self) -> str:
        if self.file_shape != self.model_shape:
            return f"shape {_shape(self.file_shape)} in file, {_shape(self.model_shape)} in model"
        return f"dtype {self.file_dtype} in file, {self.model_dtype} in model"


@dataclass(frozen=True)
class Cast:
    """A tensor converted while loading (e.g. float16 in the file into a float32 model)."""

    key: str
    file_dtype: str
    model_dtype: str


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"




@dataclass
class LoadReport:
    """The outcome of :func:`load_weights`: every key accounted for.

    Attributes:
        path: the file (or index / directory) read.
        format: ``"safetensors"``, ``"safetensors-sharded"`` or ``"torch"``.
        loaded: model keys written.
        missing: model keys the file does not have.
        unexpected: file keys matching no model key.
        mismatched: keys skipped (``skip_mismatched``) or refused for shape / dtype.
        casts: dtype conversions made while loading.
        prefixes_removed / prefixes_added: prefix -> number of keys.
        source_key: where a training-loop dict held the weights (``"model_state_dict"``), else None.
        other_keys: the training-loop dict's other entries (``optimizer``, ``epoch``), not loaded.
        checksums: ``"verified"`` (the data is intact: it matches the checksums written with it), ``"absent"``
            (the file has none), ``"skipped"`` (``verify=False``) or ``"present"`` (a refused load: nothing checked).
        tied: ``(alias, target)`` pairs stored once in the file.
        tied_in_model: ``(key, loaded key)`` pairs: model keys absent from the file whose tensor is the
            very tensor of a loaded key (an output layer tied to the embedding), so they are loaded too.
        recomputed: tensors no file holds (non-persistent buffers) that were on meta, computed by
            building the model again with its parameters on meta.
        on_meta: tensors of the model still on the meta device after the load (no values): a failure.
        unlisted: tensors a shard holds that its index does not list (never loaded).
        values / nbytes: numbers of values and bytes loaded.
        renamed: ``(file key, new name)`` for each key ``rename=`` changed; dropped: the keys it dropped.
        upgraded: the changes the model's modules declared for older checkpoints and made while loading
            (:class:`~torchsmith.checkpoint.upgrades.Upgrade`: torchvision FPN's old key layout, BatchNorm's
            missing ``num_batches_tracked``), as ``load_state_dict`` would.
    """

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    casts: list[Cast] = field(default_factory=list)
    prefixes_removed: dict[str, int] = field(default_factory=dict)
    prefixes_added: dict[str, int] = field(default_factory=dict)
    source_key: str | None = None
    other_keys: list[str] = field(default_factory=list)
    checksums: str = "absent"
    checksums_checked: int = 0
    tied: list[tuple[str, str]] = field(default_factory=list)
    tied_in_model: list[tuple[str, str]] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)
    on_meta: list[str] = field(default_factory=list)
    values: int = 0
    nbytes: int = 0
    model_keys: int = 0
    unlisted: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    upgraded: list[Upgrade] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded, every file key used, and no tensor is left on meta."""
        return not (self.missing or self.unexpected or self.mismatched or self.on_meta)

    def to_dict(self) -> dict:
        """A JSON-able dict (for ``--json`` and logs)."""
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def _lines(self, refused: bool = False) -> list[tuple[str, str]]:
        tied = f" (+{len(self.tied_in_model)} tied)" if self.tied_in_model else ""
        counts = f"{len(self.loaded)}{tied} of {self.model_keys} model tensors, {self.values:,} values ({format_bytes(self.nbytes, large_decimals=1)})"
        rows = [("matching", f"{counts}; none loaded (refused)") if refused else ("loaded", counts)]
        if self.source_key:
            others = f"; not loaded: {', '.join(self.other_keys)}" if self.other_keys else ""
            rows.append(("source", f"training checkpoint, weights under {self.source_key!r}{others}"))
        detail = {
            "verified": f"verified (xxh3-64, {self.checksums_checked} tensors)",
            "absent": "none in file (not written by torchsmith)",
            "skipped": "present, not verified (verify=False)",
            "present": "present, not checked (nothing was loaded)",
        }
        rows.append(("checksums", detail.get(self.checksums, self.checksums)))
        for label, table in (("removed", self.prefixes_removed), ("added", self.prefixes_added)):
            for prefix, n in sorted(table.items()):
                rows.append(("prefixes", f"{label} {prefix!r} {'from' if label == 'removed' else 'to'} {n} keys"))
        if self.renamed or self.dropped:
            dropped = f", dropped {len(self.dropped)}" if self.dropped else ""
            first = f" (e.g. {self.renamed[0][0]!r} -> {self.renamed[0][1]!r})" if self.renamed else ""
            rows.append(("renamed", f"{len(self.renamed)} keys by rename={first}{dropped}"))
        if self.unlisted:
            shown = ", ".join(self.unlisted[:5]) + (f" and {len(self.unlisted) - 5} more" if len(self.unlisted) > 5 else "")
            rows.append(("unlisted", f"{len(self.unlisted)} in the shards but not in the index, not loaded: {shown}"))
        return rows

    def _sections(self) -> list[tuple[str, list, Callable]]:
        return [
            ("missing", self.missing, lambda k: k),
            ("unexpected", self.unexpected, lambda k: k),
            ("mismatched", self.mismatched, lambda m: (m.key, m.reason)),
            ("casts", self.casts, lambda c: (c.key, f"{c.file_dtype} -> {c.model_dtype}")),
            ("tied", [(a, t, "stored once in the file") for a, t in self.tied]
             + [(k, t, "same tensor in the model, absent from the file") for k, t in self.tied_in_model],
             lambda x: (x[0], f"= {x[1]}  ({x[2]})")),
            ("upgraded", self.upgraded, lambda u: u.describe()),
            ("recomputed", self.recomputed, lambda k: (k, "not in the file; computed by building the model again")),
            ("on meta", self.on_meta, lambda k: (k, "no values: not loaded, and the model cannot recompute it")),
        ]

    def render(self, limit: int | None = None, *, owner: str = "report", refused: bool = False) -> str:
        """The report as text: every key (``limit=None``, as ``str()``), or the first ``limit`` of each kind
        and a count of the rest (as ``repr()``, and the message of a refused load, where ``owner`` names
        the object whose fields list them all and ``refused`` says the matching keys were not loaded)."""
        lines = [f"LoadReport  {self.path} ({self.format})"]
        lines += [f"  {label:<11} {text}" for label, text in self._lines(refused)]
        for label, items, fmt in self._sections():
            if not items:
                continue
            lines.append(f"  {label:<11} {len(items):,}")
            shown, left = capped(items, limit)
            cells = [fmt(i) for i in shown]
            width = max((len(c[0]) for c in cells if isinstance(c, tuple)), default=0)
            for c in cells:
                lines.append(f"    {c[0]:<{width}}  {c[1]}" if isinstance(c, tuple) else f"    {c}")
            if left:
                lines.append(f"    {more(left, label, f'{owner}.{_FIELDS[label]} lists all')}")
        lines.append(f"  {'result':<11} {'ok' if self.ok else 'INCOMPLETE: see above'}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:  # the REPL: the same table, the first few keys of each kind
        return self.render(REPR_KEYS)

    def _repr_html_(self) -> str:  # a notebook: one row per line of the report, every key escaped
        rows = list(self._lines())
        for label, items, fmt in self._sections():
            if not items:
                continue
            shown, left = capped(items, REPR_KEYS)
            for i, c in enumerate(fmt(x) for x in shown):
                key, text = c if isinstance(c, tuple) else (c, "")
                rows.append((f"{label} ({len(items):,})" if i == 0 else "", f"{key}  {text}".rstrip()))
            if left:
                rows.append(("", more(left, label, f"report.{_FIELDS[label]} lists all")))
        rows.append(("result", "ok" if self.ok else "INCOMPLETE"))
        return html_table(f"LoadReport  {self.path} ({self.format})", ["item", "detail"], rows)


REPR_KEYS = 5  # keys of each kind repr() shows
_FIELDS = {"missing": "missing", "unexpected": "unexpected", "mismatched": "mismatched", "casts": "casts",
           "tied": "tied", "upgraded": "upgraded", "recomputed": "recomputed", "on meta": "on_meta"}
