"""Results' typed provenance: read back exactly, no silent defaults (core/provenance.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import tie_tracing as tt
from tie_tracing.core._io import META_KEY, ResultFileError
from tie_tracing.core.provenance import (
    PositionalProvenance,
    ProvenanceError,
    TraceProvenance,
)


def _rewrite_header(path, edit):
    """Rewrite a saved result's JSON header with ``edit(meta)`` (tensors unchanged)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()[META_KEY])
    edit(meta)
    save_file(load_file(str(path)), str(path), metadata={META_KEY: json.dumps(meta)})


@pytest.mark.parametrize("kind", [tt.TIEResult, tt.PositionalResult])
def test_config_is_typed_and_round_trips_exactly(kind, tmp_path):
    """A result's config is its provenance class; save/load gives an equal value, field by field."""
    r = kind.synthetic(n_facts=2)
    assert isinstance(r.config, kind._CONFIG)
    loaded = kind.load(r.save(tmp_path / "r.safetensors"))
    assert type(loaded.config) is type(r.config)
    for name in kind._CONFIG.names():
        assert getattr(loaded.config, name) == getattr(r.config, name), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.config.decay = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("field", ["decay", "mode", "unknown_facts"])
def test_a_saved_file_missing_a_field_is_an_error_naming_it(tmp_path, field):
    """Every field is written; a file without one (even one with a documented value for old
    dict records) does not load, and the error names the field."""
    path = tt.TIEResult.synthetic(n_facts=2).save(tmp_path / "r.safetensors")

    def drop(meta):
        del meta["fields"]["config"]["fields"][field]

    _rewrite_header(path, drop)
    with pytest.raises(ResultFileError, match=repr(field)):
        tt.TIEResult.load(path)


def test_old_dict_records_migrate_by_the_documented_table():
    """A plain dict record (files written before typed provenance) gets exactly the values of
    ADDED for the entries it lacks; a required entry missing or an unknown one is named."""
    full = tt.TIEResult.synthetic(n_facts=1).config.to_dict()
    old = {k: v for k, v in full.items() if k not in ("mode", "sampler", "mentions")}
    value = TraceProvenance.from_record(old)
    assert (value.mode, value.sampler, value.mentions) == ("exact", None, "all")
    assert set(TraceProvenance.ADDED) >= {"mode", "sampler", "mentions"}
    with pytest.raises(ProvenanceError, match="lacks 'steps'"):
        TraceProvenance.from_record({k: v for k, v in full.items() if k != "steps"})
    with pytest.raises(ProvenanceError, match="no field 'sigma'"):
        TraceProvenance.from_record(full | {"sigma": 1.0})
    p = tt.PositionalResult.synthetic(n_facts=1).config.to_dict()
    with pytest.raises(ProvenanceError, match="lacks 'shifted'"):
        PositionalProvenance.from_record({k: v for k, v in p.items() if k != "shifted"})


def test_the_mapping_view_lists_what_a_record_carries():
    """config[...] / in / | read like the flat record: a field whose None means "not recorded"
    is absent then; every other field is there, None or not."""
    c = tt.TIEResult.synthetic(n_facts=1).config
    assert "mask_token_id" in c and "sampler" not in c and "layers" in c and c["layers"] is None
    assert c["horizon"] is None and "horizon" in TraceProvenance.ADDED
    with pytest.raises(KeyError):
        c["sampler"]
    assert c.get("engine_stats") is None and c["decay"] == c.decay == 0.5
    d = c | {"world_size": 2}
    assert isinstance(d, TraceProvenance) and d.world_size == 2 and c.world_size is None
    assert dict(d) == {**dict(c), "world_size": 2}
    with pytest.raises(ProvenanceError, match="no field 'colour'"):
        c | {"colour": "red"}


def test_committed_figure_results_load_with_their_recorded_values():
    """The committed Figure 2 results load (dict records written before typed provenance, or
    typed values); the fields their records carry come back as written."""
    from pathlib import Path

    from tie_tracing.core._io import read_header_fields

    path = Path(__file__).resolve().parents[2] / "figures" / "figure2_tie.safetensors"
    if not path.exists():
        pytest.skip("no committed figures/figure2_tie.safetensors in this checkout")
    raw = read_header_fields(path)["config"]
    r = tt.TIEResult.load(path)
    record = raw if isinstance(raw, dict) else raw.to_dict()
    assert record and {k: getattr(r.config, k) for k in record} == record
    assert torch.isfinite(r.tie).any()
