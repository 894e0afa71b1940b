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


def _big_index(path, sites: int) -> None:
    with open(path, "w") as handle:
        handle.write("Metadata_Plate,Metadata_Well,Metadata_Site,DNA,RNA,Treatment,Split\n")
        for n in range(sites):
            plate, rest = divmod(n, 3456)
            well, site = divmod(rest, 9)
            handle.write(f"P{plate:04d},W{well:03d},{site + 1},images/p{plate}/w{well}_s{site}_dna.tif,"
                         f"images/p{plate}/w{well}_s{site}_rna.tif,T{n % 300},{n % 2}\n")


def _scan_peak_mb(path, config) -> tuple[float, object]:
    import tracemalloc

    from dpcore.metadata import scan_index
    tracemalloc.start()
    scan = scan_index(path, config, "export-sc", count_columns=("Treatment", "Split"), chunk_rows=500)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, scan


def test_the_launchers_index_scan_does_not_grow_with_the_index(tmp_path, example_config_dict):
    """What the launcher keeps of an index: counts, distinct labels/splits/plates, a 64-site sample."""
    data = {**example_config_dict, "dataset": {**example_config_dict["dataset"],
                                               "images": {**example_config_dict["dataset"]["images"],
                                                          "channels": CHANNELS}}}
    config = parse_config(data)
    peaks = []
    for sites in (3_000, 24_000):
        path = tmp_path / f"index-{sites}.csv"
        _big_index(path, sites)
        peak, scan = _scan_peak_mb(path, config)
        peaks.append(peak)
        assert scan.sites == sites and len(scan.values["Treatment"]) == 300
        assert scan.values["Split"] == {"0": sites // 2, "1": sites // 2}
        assert len(scan.plates) == -(-sites // 3456) and len(scan.sampled_sites()) == 64
    # Eight times the rows, the same chunk-sized peak (50,000-row chunks by default, 500 here to keep the test
    # short under tracemalloc, which makes the scan ~8x slower). Reading each index whole (one chunk) gave
    # peaks of 1.2 and 8.4 MB here; in 500-row chunks 1.2 and 0.8 MB.
    assert peaks[1] < 1.3 * peaks[0], peaks


def test_scan_refuses_blank_cells_with_their_lines(tmp_path, example_config_dict):
    from dpcore.metadata import scan_index
    data = {**example_config_dict, "dataset": {**example_config_dict["dataset"],
                                               "images": {**example_config_dict["dataset"]["images"],
                                                          "channels": CHANNELS}}}
    path = _write(tmp_path, "Metadata_Plate,Metadata_Well,Metadata_Site,DNA,RNA,Treatment,Split\n"
                            "P,A01,1,a.tif,b.tif,x,0\nP,A02,1,,d.tif,x,0\n")
    with pytest.raises(MetadataError, match="line 3: empty value in column"):
        scan_index(path, parse_config(data), "prepare")


def test_images_of_another_format_than_the_configs_are_refused_by_line(tmp_path, example_config_dict):
    """dataset.images.file_format: "tif" takes .tif and .tiff (any case, URLs too); a .png is refused with
    its line and column, by the launchers' scan and by validate's reading alike."""
    from dpcore.metadata import scan_index

    def config(file_format: str):
        images = {**example_config_dict["dataset"]["images"], "channels": CHANNELS, "file_format": file_format}
        return parse_config({**example_config_dict, "dataset": {**example_config_dict["dataset"], "images": images}})

    path = _write(tmp_path, "Metadata_Plate,Metadata_Well,Metadata_Site,DNA,RNA,Treatment,Split\n"
                            "P,A01,1,a.tif,s3://bucket/b.TIFF,x,0\nP,A02,1,c.tif,d.png,x,0\n")
    message = r"line 3: RNA image 'd.png' is not a tif/tiff file \(dataset.images.file_format 'tif'\)"
    with pytest.raises(MetadataError, match=message):
        scan_index(path, config("tif"), "prepare")
    with pytest.raises(MetadataError, match=message):
        load_sites(path, config("tif"), "prepare")
    with pytest.raises(MetadataError, match=r"line 2: DNA image 'a.tif' is not a png file"):
        load_sites(path, config("png"), "prepare")
