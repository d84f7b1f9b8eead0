"""ACRO's records, charts and results folder as the compat layer writes them (disclosure/compat/)."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from disclosure.compat import ACRO
from disclosure.compat.records import Records, load_records
from disclosure.engine.policy import default_policy
from disclosure.sacro import acro_config


def _small_cell_frame() -> pd.DataFrame:
    """A 3x3 count table whose cell (c, z) holds 3 people: suppression hides it and partners."""
    rows = []
    for a in "abc":
        for b in "xyz":
            rows += [(a, b)] * (3 if (a, b) == ("c", "z") else 20)
    return pd.DataFrame(rows, columns=["a", "b"])


def test_finalise_returns_records_that_load_records_reads_back(charity_data, tmp_path):
    acro = ACRO(suppress=False)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    acro.add_exception("output_0", "needed for the paper")
    written = acro.finalise(str(tmp_path / "out"))

    assert isinstance(written, Records)
    loaded = load_records(str(tmp_path / "out"))
    mine, theirs = written.get_index(0), loaded.get_index(0)
    assert (mine.uid, mine.status, mine.summary, mine.exception) == (
        theirs.uid,
        theirs.status,
        theirs.summary,
        theirs.exception,
    )
    assert mine.sdc == theirs.sdc
    assert np.array_equal(mine.output[0].to_numpy(), theirs.output[0].set_index("year").to_numpy())


def test_finalise_refuses_to_overwrite_an_existing_folder(charity_data, tmp_path, caplog):
    acro = ACRO(suppress=True)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.csv").write_text("kept")

    assert acro.finalise(str(tmp_path / "out")) is None
    assert "already exists" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["earlier.csv"]


def test_results_json_lists_secondary_suppressed_cells(tmp_path):
    frame = _small_cell_frame()
    acro = ACRO(suppress=True)
    table = acro.crosstab(frame.a, frame.b)
    acro.finalise(str(tmp_path / "out"))

    sdc = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["output_0"]["files"][0]["sdc"]
    listed = {tuple(p) for positions in sdc["cells"].values() for p in positions}
    blank = {(int(r), int(c)) for r, c in np.argwhere(np.isnan(table.to_numpy(dtype=float)))}
    assert sdc["cells"]["SecondarySuppression"]  # partners were needed
    assert sdc["summary"]["SecondarySuppression"] == len(sdc["cells"]["SecondarySuppression"])
    assert blank == listed  # every hidden cell is highlighted, and only those


def test_config_json_shows_the_policy_thresholds_and_is_not_a_results_file(charity_data, tmp_path):
    acro = ACRO(suppress=True)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    acro.finalise(str(tmp_path / "out"))

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    policy = default_policy()
    assert config["safe_threshold"] == policy.get("frequency", "threshold")
    assert config["safe_nk_k"] == policy.get("magnitude", "nk_k")
    assert config["tre_policy"]["sha256"] == policy.sha256
    assert "results" not in config and "version" not in config  # SACRO-Viewer picks results.json
    assert (tmp_path / "out" / "checksums" / "config.json.txt").exists()


def test_researcher_editing_the_risk_appetite_changes_no_check(charity_data, caplog):
    """A researcher who lowers ACRO's threshold to 1 still has the small cells flagged."""
    acro = ACRO(suppress=False)
    with caplog.at_level(logging.WARNING, logger="acro"):
        acro.sdc_checks.risk_appetite["safe_threshold"] = 1
    acro.crosstab(charity_data.year, charity_data.grant_type)

    assert acro.results.get_index(0).status == "fail"
    assert acro.results.get_index(0).sdc["summary"]["MinimumThresholdCheck"] == 6
    assert "changes no check" in caplog.text
    assert acro_config(acro.policy)["safe_threshold"] == 10


def test_researcher_may_tighten_the_risk_appetite(charity_data):
    """Asking for more protection is always allowed: a higher threshold and the missing-values check apply."""
    df = charity_data.assign(inc_grants=charity_data.inc_grants.where(charity_data.index % 7 != 0))
    acro = ACRO(suppress=False)
    acro.crosstab(df.year, df.grant_type)
    acro.sdc_checks.risk_appetite["safe_threshold"] = 30
    acro.crosstab(df.year, df.grant_type)
    acro.sdc_checks.risk_appetite["check_missing_values"] = True
    acro.crosstab(df.year, df.grant_type, values=df.inc_grants, aggfunc="mean")

    usual, stricter, means = (acro.results.get_index(i) for i in range(3))
    assert stricter.sdc["summary"]["MinimumThresholdCheck"] > usual.sdc["summary"]["MinimumThresholdCheck"]
    assert means.sdc["summary"]["MissingCheck"] > 0
    assert acro.policy.get("frequency", "threshold") == 30


def test_disclosive_pie_is_redacted_when_suppressing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pd.DataFrame({"kind": ["A"] * 20 + ["B"] * 15 + ["D"] * 4})
    acro = ACRO(suppress=True)
    name = acro.pie(data, "kind", filename="pie.png")

    out = acro.results.get_index(-1)
    assert out.status == "fail"
    assert "Pie Chart Redacted" in out.summary
    assert name.startswith("acro_artifacts/pie_")


def test_blocked_chart_extension_draws_and_records_nothing(charity_data):
    acro = ACRO(suppress=True)
    acro.results.blocked_extensions = [".svg"]

    assert acro.hist(charity_data, "inc_grants", filename="grants.svg") is None
    assert acro.pie(charity_data, "grant_type", filename="types.svg") is None
    assert len(acro.results) == 0


def test_federated_evidence_carries_no_raw_interim_tables(charity_data, tmp_path):
    acro = ACRO(federated=True)
    table = acro.crosstab(charity_data.year, charity_data.grant_type)
    acro.finalise(str(tmp_path / "out"))

    assert len(acro.results) == 0 and isinstance(table, pd.DataFrame)
    evidence = json.loads((tmp_path / "out" / "evidence.json").read_text())
    assert evidence["outputs"]["output_0"]["interim_tables"] == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["evidence.json"]


def test_federated_evidence_names_this_tool_not_acro(charity_data, tmp_path):
    """evidence.json says which software gathered the evidence; this layer is not ACRO, so it does not say so."""
    acro = ACRO(federated=True)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    acro.finalise(str(tmp_path / "out"))

    tool = json.loads((tmp_path / "out" / "evidence.json").read_text())["tool"]
    assert tool["@type"] == "SoftwareApplication"
    assert tool["name"] == "tre-disclosure"
    assert "ACRO" not in json.dumps(tool)


def test_crosstab_layout_matches_pandas(charity_data):
    df = charity_data
    ours = ACRO(suppress=False).crosstab(df.year, df.grant_type, margins=True)
    pd.testing.assert_frame_equal(ours, pd.crosstab(df.year, df.grant_type, margins=True))


def test_float32_sums_show_pandas_digits_and_are_checked_on_exact_totals(charity_data):
    """pandas adds a float32 column in float32 (a year's grant total of 8.1e8 is 64 off the exact sum): the
    table shows pandas' digits, so the researcher's own pandas table agrees, while the rules and the
    suppression audit use the float64 totals."""
    df = charity_data
    acro = ACRO(suppress=False)
    ours = acro.crosstab(df.year, df.survivor, values=df.inc_grants, aggfunc="sum")
    pandas = pd.crosstab(df.year, df.survivor, values=df.inc_grants, aggfunc="sum")
    exact = df.assign(v=df.inc_grants.astype("float64")).pivot_table(
        index="year", columns="survivor", values="v", aggfunc="sum", observed=True
    )
    assert ours.equals(pandas)
    assert not np.array_equal(ours.to_numpy(), exact.to_numpy().astype("float32"))  # the 64 is there
    stats = ACRO(suppress=False)._check(df, ["year", "survivor"], "inc_grants", "sum", 1).stats
    assert np.allclose(stats.total[stats.interior], exact.to_numpy(), rtol=0, atol=1e-3)


@pytest.mark.parametrize("values", [["inc_grants", "inc_activity"]])
def test_pivot_table_of_several_values_raises_like_acro(charity_data, values):
    with pytest.raises(ValueError, match="multiple values"):
        ACRO().pivot_table(charity_data, index=["grant_type"], values=values, aggfunc="mean")


def test_results_json_summary_starts_with_the_status_sacro_viewer_shows(charity_data, tmp_path):
    """SACRO-Viewer's badge is results.json's summary before the first '; ', so the file keeps the status
    first; the record (and load_records) shows ACRO 1.0.2's text, whose first word is the analysis."""
    acro = ACRO(suppress=False)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    acro.finalise(str(tmp_path / "out"))
    record = acro.results.get_index(0)
    written = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["output_0"]

    assert written["summary"].split("; ")[0] == record.status == "fail"
    assert "MinimumThresholdCheck: fail - 6 cells may need suppressing." in written["summary"]
    assert record.summary.startswith("FrequencyTable : \n")
    assert " MinimumThresholdCheck: fail - 6 cells may need suppressing.\n" in record.summary
    assert load_records(str(tmp_path / "out")).get_index(0).summary == record.summary


def test_rounding_rounds_every_released_value_and_still_checks_means(charity_data):
    """Rounding is the researcher's choice of presentation: counts, means and medians are all shown to the
    base, as ACRO shows them; the mean table's own rules still decide what may be released."""
    df = charity_data
    acro = ACRO(suppress=False)
    acro.enable_rounding(5)
    counts = acro.crosstab(df.year, df.grant_type)
    means = acro.pivot_table(df, index=["grant_type"], values="inc_grants", aggfunc="mean")
    medians = acro.pivot_table(df, index=["grant_type"], values="inc_grants", aggfunc="median")

    for table in (counts, means, medians):
        shown = table.to_numpy(dtype=float)
        shown = shown[~np.isnan(shown)]
        assert shown.size and (shown % 5 == 0).all()
    exact = df.groupby("grant_type", observed=True)["inc_grants"].mean()
    assert np.allclose(means["inc_grants"].to_numpy(), exact.to_numpy(), atol=2.5, rtol=1e-6)
    assert "p_percent" in {c["rule"] for c in acro.results.get_index(1).verdict["criteria"]}


def test_results_json_names_this_tool_and_its_policy(charity_data, tmp_path):
    acro = ACRO(suppress=True)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    acro.finalise(str(tmp_path / "out"))

    tool = json.loads((tmp_path / "out" / "results.json").read_text())["tool"]
    assert tool["name"] == "tre-disclosure"
    assert tool["policy"]["sha256"] == default_policy().sha256


def test_fair_summaries_list_every_output(charity_data):
    acro = ACRO(suppress=False)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    acro.crosstab(charity_data.year, charity_data.survivor)

    text = acro.show_fair_summaries()
    assert text.splitlines()[0] == "output_0" and "output_1" in text.splitlines()


def test_sdc_positions_follow_the_rows_the_table_shows():
    """A category with no records is not shown (pandas' layout), so flagged positions skip it."""
    frame = _small_cell_frame()
    frame["a"] = pd.Categorical(frame["a"], categories=["a", "never", "b", "c"])
    acro = ACRO(suppress=True)
    table = acro.crosstab(frame.a, frame.b)

    cells = acro.results.get_index(0).sdc["cells"]
    assert list(table.index) == ["a", "b", "c"]
    assert [2, 2] in cells["MinimumThresholdCheck"]  # (c, z): third row shown, not fourth
    listed = {tuple(p) for positions in cells.values() for p in positions}
    assert listed == {(int(r), int(c)) for r, c in np.argwhere(np.isnan(table.to_numpy(dtype=float)))}
