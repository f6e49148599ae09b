import numpy as np
import pytest

from lib.celeba import read_attribute_file, read_celeba


def write_celeba(root, attr_text, partition_text, images=()):
    (root / "img_align_celeba").mkdir(parents=True)
    for name in images:
        (root / "img_align_celeba" / name).write_bytes(b"")
    (root / "list_attr_celeba.txt").write_text(attr_text)
    (root / "list_eval_partition.txt").write_text(partition_text)
    return root


# The official file's quirks: a count line, a trailing space after the names, and values
# padded to two columns so that 1 is preceded by two spaces.
OFFICIAL = (
    "3\nBald Smiling Young \nimage_2.jpg -1  1  1\nimage_10.jpg  1 -1  1\nimage_1.jpg -1 -1 -1\n"
)
PARTITION = "image_1.jpg 0\nimage_10.jpg 2\nimage_2.jpg 1\n"


def test_reads_official_quirks_and_joins_by_name(tmp_path):
    index = read_celeba(write_celeba(tmp_path, OFFICIAL, PARTITION))
    assert index.attributes == ["Bald", "Smiling", "Young"]
    assert index.files == ["image_2.jpg", "image_10.jpg", "image_1.jpg"]
    # Rows stay with their own file name, whatever the sort order of names would say.
    by_name = dict(zip(index.files, index.labels.tolist(), strict=True))
    assert by_name == {
        "image_2.jpg": [0, 1, 1],
        "image_10.jpg": [1, 0, 1],
        "image_1.jpg": [0, 0, 0],
    }
    splits = dict(zip(index.files, index.split.tolist(), strict=True))
    assert splits == {"image_2.jpg": 1, "image_10.jpg": 2, "image_1.jpg": 0}
    assert index.labels.dtype == np.uint8


@pytest.mark.parametrize(
    "text, message",
    [
        ("2\nA B\nx.jpg 1 -1\n", "count line says 2"),
        ("1\nA B\nx.jpg 1\n", "expected a file name and 2 values"),
        ("1\nA B\nx.jpg 1 0\n", "values must be 1 or -1"),
        ("one\nA B\nx.jpg 1 1\n", "expected the number of images"),
        ("2\nA\nx.jpg 1\nx.jpg -1\n", "more than once"),
    ],
)
def test_rejects_malformed_attribute_files(tmp_path, text, message):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_attribute_file(path)


@pytest.mark.parametrize(
    "missing", ["img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"]
)
def test_missing_inputs_fail_naming_the_path(tmp_path, missing):
    root = write_celeba(tmp_path / "celeba", OFFICIAL, PARTITION)
    target = root / missing
    if target.is_dir():
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(FileNotFoundError, match=str(target)):
        read_celeba(root)


def test_labelled_image_without_split_is_an_error(tmp_path):
    root = write_celeba(tmp_path, OFFICIAL, "image_1.jpg 0\n")
    with pytest.raises(ValueError, match="2 labelled images have no split"):
        read_celeba(root)


def test_reads_kaggle_csvs_joined_by_name(tmp_path):
    (tmp_path / "img_align_celeba" / "img_align_celeba").mkdir(parents=True)
    (tmp_path / "list_attr_celeba.csv").write_text(
        "image_id,Bald,Smiling\nimage_10.jpg,1,-1\nimage_2.jpg,-1,1\n"
    )
    (tmp_path / "list_eval_partition.csv").write_text(
        "image_id,partition\nimage_2.jpg,2\nimage_10.jpg,0\n"
    )
    index = read_celeba(tmp_path)
    assert index.layout == "kaggle" and index.attributes == ["Bald", "Smiling"]
    assert dict(zip(index.files, index.labels.tolist(), strict=True)) == {
        "image_10.jpg": [1, 0],
        "image_2.jpg": [0, 1],
    }
    assert dict(zip(index.files, index.split.tolist(), strict=True)) == {
        "image_10.jpg": 0,
        "image_2.jpg": 2,
    }


@pytest.mark.parametrize(
    "attr, message",
    [
        ("name,Bald\nx.jpg,1\n", "header starting with image_id"),
        ("image_id,Bald\nx.jpg,1,1\n", "expected image_id and 1 values"),
        ("image_id,Bald\nx.jpg,0\n", "values must be 1 or -1"),
    ],
)
def test_rejects_malformed_kaggle_files(tmp_path, attr, message):
    (tmp_path / "img_align_celeba" / "img_align_celeba").mkdir(parents=True)
    (tmp_path / "list_attr_celeba.csv").write_text(attr)
    (tmp_path / "list_eval_partition.csv").write_text("image_id,partition\nx.jpg,0\n")
    with pytest.raises(ValueError, match=message):
        read_celeba(tmp_path)


def test_kaggle_layout_without_its_nested_image_folder_names_the_path(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "list_attr_celeba.csv").write_text("image_id,Bald\n")
    with pytest.raises(FileNotFoundError, match="img_align_celeba/img_align_celeba"):
        read_celeba(tmp_path)


@pytest.mark.parametrize(
    "name", ["../x.jpg", "/etc/passwd", "sub/../../x.jpg", "..", "a\\..\\x.jpg"]
)
def test_image_names_never_leave_the_image_folder(tmp_path, name):
    attr = f"2\nBald\nimage_1.jpg 1\n{name} -1\n"
    root = write_celeba(tmp_path, attr, f"image_1.jpg 0\n{name} 1\n")
    with pytest.raises(ValueError, match="must be file names in the image folder") as refused:
        read_celeba(root)
    assert repr(name) in str(refused.value)


def test_kaggle_image_names_never_leave_the_image_folder(tmp_path):
    (tmp_path / "img_align_celeba" / "img_align_celeba").mkdir(parents=True)
    (tmp_path / "list_attr_celeba.csv").write_text("image_id,Bald\n../../x.jpg,1\n")
    (tmp_path / "list_eval_partition.csv").write_text("image_id,partition\n../../x.jpg,0\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba\.csv.*'\.\./\.\./x\.jpg'"):
        read_celeba(tmp_path)
