"""Reading and checking the index."""

from __future__ import annotations

import pytest

from dpcore.config import parse_config
from dpcore.metadata import MetadataError, load_sites, read_index, required_columns, sites_from_index

CHANNELS = ["DNA", "RNA"]


def _write(tmp_path, text):
    path = tmp_path / "index.csv"
    path.write_text(text)
    return path


def test_every_cell_is_a_string_and_nothing_becomes_na(tmp_path):
    path = _write(tmp_path, "Metadata_Plate,Metadata_Well,Metadata_Site,DNA,RNA,Treatment,Dose\n"
                            "0001,A01,01,a.tif,b.tif,NA,\n")
    frame = read_index(path)
    row = frame.iloc[0]
    assert row["Metadata_Plate"] == "0001" and row["Metadata_Site"] == "01"
    assert row["Treatment"] == "NA" and row["Dose"] == ""
    site = sites_from_index(frame, CHANNELS, str(path))[0]
    assert site.key == "0001/A01-01"
    assert site.channel_files == ("a.tif", "b.tif")
    assert site.value("Treatment") == "NA"


def test_missing_columns_are_listed(tmp_path):
    path = _write(tmp_path, "Metadata_Plate,Metadata_Site,DNA\nP,1,a.tif\n")
    with pytest.raises(MetadataError) as caught:
        sites_from_index(read_index(path), CHANNELS, str(path))
    message = str(caught.value)
    assert "Metadata_Well" in message and "RNA" in message and str(path) in message


def test_duplicate_sites_and_blank_cells_name_their_lines(tmp_path):
    path = _write(tmp_path, "Metadata_Plate,Metadata_Well,Metadata_Site,DNA,RNA\n"
                            "P,A01,1,a.tif,b.tif\nP,A01,1,c.tif,d.tif\nP,A02,1,,d.tif\n")
    with pytest.raises(MetadataError) as caught:
        sites_from_index(read_index(path), CHANNELS, str(path))
    message = str(caught.value)
    assert "line 3: site P/A01-1 duplicates line 2" in message
    assert "line 4: empty value in column(s) DNA" in message


def test_required_columns_depend_on_the_command(example_config_dict):
    config = parse_config(example_config_dict)
    assert "Split" not in required_columns(config, "prepare")
    assert {"Treatment", "Split"} <= set(required_columns(config, "export-sc"))
    assert "Treatment" in required_columns(config, "prepare")  # control images are found by label


def test_load_sites_on_the_real_index(example_root, example_config_dict):
    config = parse_config(example_config_dict)
    sites = load_sites(example_root / "inputs/metadata/index.csv", config, "export-sc")
    assert len(sites) == 12
    assert {s.well for s in sites} == {"A01", "A13"}
    assert all(len(s.channel_files) == 5 for s in sites)
    # Channel files follow the config's channel order, not the index column order.
    assert "w3" in sites[0].channel_files[1]  # RNA is w3 in BBBC022


def test_unreadable_index_is_a_clear_error(tmp_path):
    with pytest.raises(MetadataError, match="does not exist"):
        read_index(tmp_path / "nope.csv")
    path = _write(tmp_path, "")
    with pytest.raises(MetadataError, match="cannot be parsed"):
        read_index(path)
