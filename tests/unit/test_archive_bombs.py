"""Archive bombs: a tiny archive that claims gigabytes is skipped and counted, never read whole or decoded.

The bombs are built here at no cost in disk or memory: a sparse 8 GiB file archived with GNU tar's ``--sparse``
(a 10 KB tar), and PNGs whose header claims up to 20000×20000 pixels over a few KB of compressed zeros.
"""

import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image
from helpers import image_bytes, project_pythonpath, write_tar

from dmr_core.data.datasets import CIFAR10_CLASSES, load_ood_set, read_tar_split
from dmr_core.data.sources import MAX_IMAGE_PIXELS

SPARSE_SIZE = 8 * 2**30


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width``×``height`` black pixels: the zero rows compress about 1000:1, so
    20000×20000 (400 M pixels, 1.2 GB once converted to RGB) is a 50 KB file. Compressed a few rows at a time."""
    rows_per_step = 100
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = [packer.compress(row * min(rows_per_step, height - start)) for start in range(0, height, rows_per_step)]
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b"")


def good_images(count: int = 4) -> dict[str, bytes]:
    return {f"scenes_crop/test/{i}.png": image_bytes(value=i) for i in range(count)}


def sparse_archive(folder: Path) -> Path:
    """``folder/scenes_crop.tar``: four good images and a sparse ``big.png`` that claims 8 GiB, via GNU tar."""
    if shutil.which("tar") is None or "GNU tar" not in subprocess.run(
            ["tar", "--version"], check=False, capture_output=True, text=True).stdout:
        pytest.skip("needs GNU tar to build a sparse archive")
    tree = folder / "tree"
    images = tree / "scenes_crop" / "test"
    images.mkdir(parents=True)
    for name, payload in good_images().items():
        (tree / name).write_bytes(payload)
    with open(images / "big.png", "wb") as big:
        big.truncate(SPARSE_SIZE)  # a hole: no disk used
    archive = folder / "scenes_crop.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(archive), "-C", str(tree), "scenes_crop"], check=True)
    shutil.rmtree(tree)
    with tarfile.open(archive) as tar:
        member = tar.getmember("scenes_crop/test/big.png")
    if not (member.issparse() and member.size == SPARSE_SIZE and archive.stat().st_size < 2**20):
        pytest.skip("this tar did not write a small sparse member")
    return archive


def image_bomb_archive(folder: Path) -> Path:
    """``folder/scenes_crop.tar``: four good images and three PNGs over the pixel cap, one under PIL's own limit,
    one where PIL only warns, one where PIL raises ``DecompressionBombError``."""
    bombs = {"scenes_crop/test/cap.png": png_bomb(5000, 5000),
             "scenes_crop/test/warns.png": png_bomb(10000, 10000),
             "scenes_crop/test/raises.png": png_bomb(20000, 20000)}
    assert all(len(payload) < 100_000 for payload in bombs.values())
    return write_tar(folder / "scenes_crop.tar", {**good_images(), **bombs})


def test_sparse_member_claiming_8_gib_is_skipped_unread(tmp_path, monkeypatch):
    sparse_archive(tmp_path)
    monkeypatch.setenv("DMR_DATA_HOME", str(tmp_path))
    s = load_ood_set("scenes_crop")
    assert s.images.shape == (4, 32, 32, 3) and s.skipped == {"too_large": 1}


def test_images_over_the_pixel_cap_are_skipped_undecoded(tmp_path, monkeypatch):
    assert 5000 * 5000 > MAX_IMAGE_PIXELS
    image_bomb_archive(tmp_path)
    monkeypatch.setenv("DMR_DATA_HOME", str(tmp_path))
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # none escapes
        s = load_ood_set("scenes_crop")
    assert s.images.shape == (4, 32, 32, 3) and s.skipped == {"too_large": 3}
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's global is left alone
    # the bombs are real: without the cap, PIL would decode the first and stop the stage on the last
    with Image.open(io.BytesIO(png_bomb(5000, 5000))) as img:
        assert img.size == (5000, 5000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png_bomb(20000, 20000)))


def test_a_good_image_next_to_the_bombs_is_kept_in_class_layout(tmp_path):
    members = {f"cifar10/train/{c}/0.png": image_bytes(value=i) for i, c in enumerate(CIFAR10_CLASSES)}
    members["cifar10/train/cat/bomb.png"] = png_bomb(20000, 20000)
    s = read_tar_split(write_tar(tmp_path / "c.tar", members), "cifar10", "train", CIFAR10_CLASSES)
    assert len(s.images) == 10 and s.skipped == {"too_large": 1}


PEAK_MEMORY_SCRIPT = """
import sys
from pathlib import Path
from PIL import Image
Image.MAX_IMAGE_PIXELS = None  # PIL's own check off: the pipeline's cap alone must hold
from dmr_core.data.datasets import read_tar_split
for archive in sys.argv[1:]:
    s = read_tar_split(Path(archive), "scenes_crop", "test", None)
    print(len(s.images), sorted(s.skipped.items()))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest, with torch loaded) across exec
print(next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="measures peak memory in /proc (Linux)")
def test_bombs_cost_bounded_memory(tmp_path):
    """Both bombs read in a child whose address space is capped at 2 GiB, far below what they claim; its peak
    resident memory stays near that of importing numpy and PIL (about 40 MiB)."""
    import resource

    (tmp_path / "sparse").mkdir()
    (tmp_path / "images").mkdir()
    sparse, images = sparse_archive(tmp_path / "sparse"), image_bomb_archive(tmp_path / "images")

    def cap_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    env = {**os.environ, "PYTHONPATH": project_pythonpath(),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(sparse), str(images)], check=False,
                            capture_output=True, text=True, env=env, preexec_fn=cap_address_space, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")
    assert lines[:2] == ["4 [('too_large', 1)]", "4 [('too_large', 3)]"]
    peak_mib = int(lines[2])
    assert peak_mib < 200, f"peak resident memory {peak_mib} MiB"
