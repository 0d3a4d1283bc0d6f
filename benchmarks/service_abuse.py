"""Abuse of a real ``braintumor serve`` process: decompression bombs, many concurrent large images, slow clients.

Starts the server on a free port of 127.0.0.1 (a tiny run trained on synthetic phantoms, or RUN given), then:

* ``bombs``: ``--bombs`` concurrent uploads of each bomb (a 9000x9000 deflated DICOM, a NIfTI whose gzip stream
  expands to 512 MiB, a PNG whose header announces 30000x30000): every answer should be a 413 in well under 1 s,
  while ``/healthz`` keeps answering and the server's RSS stays under 1 GB;
* ``large_images``: ``--large`` concurrent 6300x6300 PNGs (about 115 KB each, 40 megapixels decoded): memory is
  bounded by the decoding slots (``--max-concurrent``) x one image;
* ``slow_connections``: ``--slow`` connections that send a request's headers one line a second (slowloris) plus
  one upload trickling its body: ``/healthz`` latency meanwhile, and when the server closed them
  (``--header-timeout``/``--body-timeout`` of the server, 5 s here by default to keep the run short).

Prints ONE JSON object (latencies in ms, memory in MB); exit code 1 when a target is missed.

Example:
    python benchmarks/service_abuse.py                       # trains a tiny run first (about 15 s)
    python benchmarks/service_abuse.py runs/navoneel --bombs 16 --slow 300
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, run_copy, stop_process, wait_healthy  # noqa: E402

#: Targets of issue 19.
TARGETS = {"bomb_ms": 1000, "peak_rss_mb": 1024, "healthz_ms": 1000}


# ---------------------------------------------------------------------------------------------------- the bombs


def dicom_bomb(rows: int = 9000, cols: int = 9000, bits: int = 8) -> bytes:
    """A valid DICOM file (Deflated Explicit VR Little Endian) of ``rows x cols`` black pixels: a few hundred KB
    that expand to ``rows * cols * bits / 8`` bytes. Built stream-wise (no full-size buffer)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    n = rows * cols * bits // 8
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB" if bits == 8 else b"OW", 0, n)
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [packer.compress(head)]
    chunk = bytes(1 << 20)
    for _ in range(n >> 20):
        parts.append(packer.compress(chunk))
    parts += [packer.compress(bytes(n & ((1 << 20) - 1))), packer.flush()]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, uid
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    return out.getvalue() + b"".join(parts)


def dicom_header_only(rows: int = 9000, cols: int = 9000) -> bytes:
    """An uncompressed DICOM whose header announces ``rows x cols`` pixels, with 64 bytes of pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    uid = generate_uid()
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    write_dataset(out, ds)
    return out.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 64) + bytes(64)


def nifti_bomb(mib: int = 512, dims: tuple[int, int, int] | None = None) -> bytes:
    """A ``.nii.gz`` (uint8) whose gzip stream expands to ``mib`` MiB of voxels (header dims ``1024 x 1024 x mib``
    unless ``dims`` is given): about ``mib`` KB on the wire, built from concatenated gzip members."""
    dims = dims or (1024, 1024, mib)
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *dims, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 2, 8)  # datatype uint8, bitpix 8
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)  # pixdim
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<f", hdr, 112, 1.0)  # scl_slope
    hdr[344:348] = b"n+1\0"
    member = gzip.compress(bytes(1 << 20), compresslevel=6)
    return gzip.compress(bytes(hdr) + b"\0" * 4) + member * mib


def png_header_only(w: int = 30000, h: int = 30000) -> bytes:
    """A PNG whose header announces ``w x h`` pixels, with one tiny (bogus) IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def large_png(side: int = 6300) -> bytes:
    """A real ``side x side`` greyscale PNG (a dark disc on black: compresses to ~100 KB)."""
    import numpy as np
    from PIL import Image

    yy, xx = np.ogrid[:side, :side]
    img = (((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (side / 3) ** 2).astype(np.uint8) * 90
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------- measuring


class RssSampler(threading.Thread):
    """Samples a process's resident memory (``/proc/PID/status`` VmRSS) every 20 ms; ``peak_mb`` is the largest."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.stop = pid, 0.0, threading.Event()

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def run(self):
        while not self.stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            time.sleep(0.02)


class HealthPinger(threading.Thread):
    """``GET /healthz`` on a fresh connection every 100 ms; latencies in ms (``None`` for a failure)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.latencies, self.stop = url, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
                    ok = r.status == 200
            except OSError:
                ok = False
            self.latencies.append((time.perf_counter() - t0) * 1000 if ok else None)
            time.sleep(0.1)

    def summary(self) -> dict:
        ok = sorted(x for x in self.latencies if x is not None)
        return {"pings": len(self.latencies), "failed": len(self.latencies) - len(ok),
                "p50_ms": round(ok[len(ok) // 2], 1) if ok else None,
                "max_ms": round(ok[-1], 1) if ok else None}


def _post(url: str, name: str, data: bytes, client=None) -> tuple[int, float, str]:
    import httpx

    client = client or httpx
    t0 = time.perf_counter()
    try:
        r = client.post(url + "/v1/predict", files={"file": (name, data, "application/octet-stream")}, timeout=120)
        detail = r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") \
            else r.text[:200]
        return r.status_code, (time.perf_counter() - t0) * 1000, str(detail)[:200]
    except Exception as exc:  # noqa: BLE001 - a failure is a result here
        return -1, (time.perf_counter() - t0) * 1000, type(exc).__name__


def concurrent_uploads(url: str, pid: int, name: str, data: bytes, n: int) -> dict:
    """``n`` uploads of ``data`` at once: status codes, latencies, the server's peak RSS, /healthz meanwhile."""
    import httpx

    rss, ping = RssSampler(pid), HealthPinger(url)
    before = rss.rss_mb()
    rss.start()
    ping.start()
    # One client, n connections opened beforehand: the latencies are the server's, not TLS-context set-ups.
    with httpx.Client(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)) as client:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda _: client.get(url + "/healthz"), range(n)))
            t0 = time.perf_counter()
            results = list(pool.map(lambda _: _post(url, name, data, client), range(n)))
    wall = time.perf_counter() - t0
    time.sleep(0.3)
    rss.stop.set()
    ping.stop.set()
    rss.join()
    ping.join()
    codes: dict[str, int] = {}
    for code, _, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    lat = sorted(ms for _, ms, _ in results)
    return {"upload_bytes": len(data), "requests": n, "status_codes": codes, "detail": results[0][2],
            "max_ms": round(lat[-1], 1), "p50_ms": round(lat[len(lat) // 2], 1), "wall_s": round(wall, 2),
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(max(rss.peak_mb, before), 1),
            "healthz": ping.summary()}


async def _slowloris(host: str, port: int, n: int, hold: float, stats: dict) -> None:
    """``n`` connections sending one header line a second; record when the server closes each."""
    t0 = time.perf_counter()
    closed: list[float] = []
    got_408 = 0

    async def one(i: int):
        nonlocal got_408
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_failed"] = stats.get("connect_failed", 0) + 1
            return
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            while time.perf_counter() - t0 < hold:
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                except asyncio.TimeoutError:
                    writer.write(f"X-Slow-{i}: still typing\r\n".encode())
                    continue
                got_408 += data.startswith(b"HTTP/1.1 408")
                closed.append(time.perf_counter() - t0)
                return
        except (ConnectionError, OSError):
            closed.append(time.perf_counter() - t0)
        finally:
            writer.close()

    async def slow_upload():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 1000000\r\n\r\n")
        try:
            while time.perf_counter() - t0 < hold:
                writer.write(b"\0")
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                except asyncio.TimeoutError:
                    continue
                stats["slow_upload"] = {"closed_after_s": round(time.perf_counter() - t0, 2),
                                        "answer": data.split(b"\r\n", 1)[0].decode("latin-1")}
                return
        except (ConnectionError, OSError):
            stats["slow_upload"] = {"closed_after_s": round(time.perf_counter() - t0, 2), "answer": None}
        finally:
            writer.close()
        stats.setdefault("slow_upload", {"closed_after_s": None, "answer": "still open"})

    await asyncio.gather(*(one(i) for i in range(n)), slow_upload())
    stats.update({"connections": n, "closed_by_server": len(closed), "answered_408": got_408,
                  "closed_after_s_max": round(max(closed), 2) if closed else None})


def slow_connections(url: str, port: int, n: int, hold: float) -> dict:
    ping = HealthPinger(url)
    ping.start()
    stats: dict = {}
    asyncio.run(_slowloris("127.0.0.1", port, n, hold, stats))
    ping.stop.set()
    ping.join()
    stats["healthz"] = ping.summary()
    return stats


# -------------------------------------------------------------------------------------------------------- main


def _tiny_run(dest: Path) -> Path:
    from braintumor.config import TrainConfig
    from braintumor.data.synthetic import write_phantoms
    from braintumor.training import train

    write_phantoms(dest / "phantoms", n=120, size=64, seed=0)
    cfg = TrainConfig(data_dir=str(dest / "phantoms"), model="cnn", img_size=64, epochs=2, batch_size=32, seed=0)
    return train(cfg, out=dest / "run").run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="run folder or .onnx file (default: a tiny run trained here)")
    ap.add_argument("--bombs", type=int, default=16, help="concurrent uploads of each bomb")
    ap.add_argument("--large", type=int, default=8, help="concurrent 6300x6300 PNGs (0: skip)")
    ap.add_argument("--slow", type=int, default=300, help="slowloris connections (0: skip)")
    ap.add_argument("--header-timeout", type=float, default=5.0)
    ap.add_argument("--body-timeout", type=float, default=5.0)
    ap.add_argument("--max-concurrent", type=int, default=2)
    args = ap.parse_args(argv)
    if not (1 <= args.bombs <= 256 and 0 <= args.large <= 64 and 0 <= args.slow <= 2000):
        ap.error("--bombs in 1..256, --large in 0..64, --slow in 0..2000")

    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        model = str(_tiny_run(Path(tmp.name) / "tiny"))
    elif Path(model).is_dir():
        model = str(run_copy(model, Path(tmp.name) / "run"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(Path(tmp.name) / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "braintumor", "serve", model, "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning", "--header-timeout", str(args.header_timeout),
                             "--body-timeout", str(args.body_timeout), "--max-concurrent", str(args.max_concurrent)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    result: dict = {"url": url, "cpu_count": os.cpu_count(), "targets": TARGETS,
                    "server": {"header_timeout_s": args.header_timeout, "body_timeout_s": args.body_timeout,
                               "max_concurrent": args.max_concurrent}}
    try:
        wait_healthy(url, proc, timeout=300)
        _post(url, "warmup.png", large_png(256))  # the first prediction exports/loads the model
        bombs = {"dicom_9000x9000_deflated.dcm": dicom_bomb(), "dicom_9000x9000_header.dcm": dicom_header_only(),
                 "nifti_512mib.nii.gz": nifti_bomb(512), "png_30000x30000.png": png_header_only()}
        result["bombs"] = {name: concurrent_uploads(url, proc.pid, name, data, args.bombs)
                           for name, data in bombs.items()}
        if args.large:
            result["large_images"] = concurrent_uploads(url, proc.pid, "big.png", large_png(6300), args.large)
        if args.slow:
            hold = max(args.header_timeout, args.body_timeout) + 4
            result["slow_connections"] = slow_connections(url, port, args.slow, hold)
        result["server_alive"] = proc.poll() is None
    finally:
        stop_process(proc)
        log.seek(0)
        lines = log.read().splitlines()
        result["server_log"] = {"lines": len(lines), "tracebacks": sum("Traceback" in x for x in lines)}
        log.close()
        tmp.cleanup()
    misses = []
    for name, b in result.get("bombs", {}).items():
        if b["status_codes"] != {"413": args.bombs} or b["max_ms"] > TARGETS["bomb_ms"]:
            misses.append(f"bomb {name}")
        if b["peak_rss_mb"] > TARGETS["peak_rss_mb"] or b["healthz"]["failed"]:
            misses.append(f"memory/healthz {name}")
    slow = result.get("slow_connections")
    if slow and (slow["healthz"]["failed"] or (slow["healthz"]["max_ms"] or 0) > TARGETS["healthz_ms"]):
        misses.append("healthz during slow connections")
    result["missed"] = misses
    print(json.dumps(result))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
